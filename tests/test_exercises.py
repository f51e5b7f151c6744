"""Every notebook exercise: its reference solution passes, its typical wrong answers fail."""

import pytest

from fwplab.exercises import EXERCISES, check, exercises_of, solution

ALL = [e.key for n in range(1, 10) for e in exercises_of(n)]


def test_every_notebook_has_exercises():
    numbers = {key[:2] for key in ALL}
    assert {"01", "02", "03", "04", "05", "06", "07", "08", "09"} <= numbers, sorted(numbers)
    for n in range(1, 10):
        assert 2 <= len(exercises_of(n)) <= 4, (n, [e.key for e in exercises_of(n)])


@pytest.mark.parametrize("key", ALL)
def test_reference_solution_passes(key):
    verdict = check(key, solution(key), quiet=True)
    assert verdict, verdict.message


@pytest.mark.parametrize("key", ALL)
def test_wrong_answers_fail_with_a_hint(key):
    wrong = EXERCISES[key].wrong_answers()
    assert wrong, f"{key} records no wrong answer"
    for answer in wrong:
        verdict = check(key, answer, quiet=True)
        assert not verdict
        assert "Hint:" in verdict.message and len(verdict.message) > len(key) + 20


def test_unanswered_and_unknown():
    key = ALL[0]
    verdict = check(key, None, quiet=True)
    assert not verdict and "not answered yet" in verdict.message
    with pytest.raises(ValueError, match="unknown exercise"):
        check("99.nothing", 1)
