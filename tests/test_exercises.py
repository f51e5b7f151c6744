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


# ---------------------------------------------------------------- answers that must pass too
# The judges draw fresh inputs at every call, so each valid alternative is checked a few times.

import math  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fwplab.exercises import package_pass_through, plain, uses_a_loop  # noqa: E402


def _numpy_oja_step(w, x, eta):
    w, x = w.numpy(), x.numpy()
    y = (w * x).sum(-1, keepdims=True)
    return w + eta * y * (x - y * w)


def _numpy_attention(phi_k, values, phi_q):
    return np.tril(phi_q.numpy() @ phi_k.numpy().T) @ values.numpy()


def _numpy_delta_step(W, k, v, beta):
    W, k, v = W.numpy(), k.numpy(), v.numpy()
    return W + beta * np.outer(v - W @ k, k)


def _handwritten_drop(x, lengths, rate):
    """Random drops without fwplab.drop_observations: a random permutation per series."""
    out = x.clone()
    for b, n in enumerate(lengths.tolist()):
        count = min(math.floor(rate * n), n - 2)
        out[b, torch.randperm(n)[:count]] = math.nan
    time = torch.arange(x.shape[1], dtype=x.dtype)[None, :, None].expand(x.shape[0], -1, 1)
    return torch.cat([time, out], dim=-1)


VALID_ALTERNATIVES = {
    "01.oja-euler-step": [_numpy_oja_step],
    "01.batch-lms-bound": [1.33, np.float64(4 / 3), torch.tensor(4 / 3)],  # 3 significant digits
    "01.oja-norm": [np.float32(0.5), torch.tensor([0.5])],
    "01.lms-fixed-point": [np.array([[0.833, 0.333]]), [[5 / 6, 1 / 3]]],
    "02.linear-attention": [_numpy_attention],
    "02.delta-step": [_numpy_delta_step],
    "04.drop-observations": [_handwritten_drop],
    "06.stage-points": [lambda: tuple(float(v) for v in solution("06.stage-points")),
                        lambda: tuple(np.int64(v) for v in solution("06.stage-points"))],
    "06.rank-one-flops": [lambda d: 4 * d * d - d, lambda d: np.int64(4 * d * d + d),
                          lambda d: float(4 * d * d + 2 * d)],
    "07.sepsis-lr": [np.float64(4.8e-4)],
}


@pytest.mark.parametrize("key", sorted(VALID_ALTERNATIVES))
def test_valid_alternatives_pass(key):
    for answer in VALID_ALTERNATIVES[key]:
        if key == "06.stage-points":
            answer = answer()
        for _ in range(3):
            verdict = check(key, answer, quiet=True)
            assert verdict, (answer, verdict.message)


@pytest.mark.parametrize("key", ALL)
def test_judges_are_stable_over_fresh_draws(key):
    """Inputs are drawn anew at every check: the solution passes and the wrong answers fail
    on every draw, not only on a lucky one."""
    for _ in range(4):
        assert check(key, solution(key), quiet=True)
        for answer in EXERCISES[key].wrong_answers():
            assert not check(key, answer, quiet=True)


def test_rounded_number_gets_a_precision_hint():
    verdict = check("01.batch-lms-bound", 1.3, quiet=True)
    assert not verdict and "significant digits" in verdict.message


def test_non_integer_counts_are_refused():
    verdict = check("06.stage-points", (640.9, 481.9), quiet=True)
    assert not verdict and "whole numbers" in verdict.message
    verdict = check("06.rank-one-flops", lambda d: 4 * d * d + d + 0.5, quiet=True)
    assert not verdict and "whole number" in verdict.message


def test_package_functions_are_refused_by_identity_and_by_name():
    import functools

    from fwplab.rules.classic import discrete_update
    from fwplab.rules.fast_weight import delta_rule, delta_update

    assert package_pass_through(delta_rule, ("delta_rule",))
    assert package_pass_through(functools.partial(discrete_update, "oja"), ())
    assert package_pass_through(lambda W, k, v, b: W + delta_update(W, k, v, b), ("delta_update",))
    assert package_pass_through(lambda W, k, v, b: W + b * torch.outer(v - W @ k, k),
                                ("delta_update",)) is None
    for key, name in (("03.delta-field", "delta_rule"), ("02.delta-step", "delta_update"),
                      ("01.oja-euler-step", "discrete_update"),
                      ("02.linear-attention", "fast_weight_attention")):
        messages = [check(key, a, quiet=True).message for a in EXERCISES[key].wrong_answers()]
        assert any("fwplab" in m and name in m for m in messages), (key, messages)


def test_loops_are_found_in_the_code():
    def for_loop(x):
        total = 0
        for value in x:
            total += value
        return total

    def while_loop(x):
        while x > 0:
            x -= 1
        return x

    assert uses_a_loop(for_loop) and uses_a_loop(while_loop)
    assert uses_a_loop(lambda x: torch.stack([row for row in x]))
    assert not uses_a_loop(lambda phi_k, v, phi_q: torch.tril(phi_q @ phi_k.T) @ v)
    verdict = check("02.linear-attention", EXERCISES["02.linear-attention"].wrong_answers()[5],
                    quiet=True)
    assert not verdict and "loop" in verdict.message


def test_drops_must_be_random_and_the_caller_rng_is_untouched():
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    assert check("04.drop-observations", solution("04.drop-observations"), quiet=True)
    assert torch.equal(torch.random.get_rng_state(), state)
    messages = [check("04.drop-observations", a, quiet=True).message
                for a in EXERCISES["04.drop-observations"].wrong_answers()[3:]]
    assert all("random" in m for m in messages), messages


def test_orthonormal_rate_checks_rates_above_two():
    verdict = check("02.orthonormal-rate", lambda b, s: min(1.0, (1 - b) ** (2 * s)), quiet=True)
    assert not verdict


def test_lookup_tables_fail():
    table = EXERCISES["05.cut-prediction"].wrong_answers()[-1]
    assert not check("05.cut-prediction", table, quiet=True)
    assert not check("06.rank-one-flops", {8: 264, 20: 1620, 64: 16448}.get, quiet=True)


class _AlwaysEqual:
    """An answer that claims to equal anything."""

    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    __hash__ = object.__hash__


class _LyingTensor(torch.Tensor):
    """A tensor whose allclose (method and function) is always true."""

    def allclose(self, *args, **kwargs):
        return True

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.allclose, torch.Tensor.allclose, torch.isclose, torch.equal):
            return True
        return super().__torch_function__(func, types, args, kwargs or {})


def _zeros_like_lying(reference):
    return torch.zeros_like(reference).as_subclass(_LyingTensor)


@pytest.mark.parametrize("key, answer", [
    ("08.structure", {name: _AlwaysEqual() for name in solution("08.structure")}),
    ("01.oja-euler-step", lambda w, x, eta: _zeros_like_lying(w)),
    ("02.linear-attention",
     lambda phi_k, v, phi_q: _zeros_like_lying(phi_q[:, :1] * v[:1])),
    ("01.lms-fixed-point", torch.zeros(1, 2).as_subclass(_LyingTensor)),
])
def test_answers_whose_own_comparisons_lie_are_judged_on_plain_values(key, answer):
    verdict = check(key, answer, quiet=True)
    assert not verdict and "\n" not in verdict.message


def test_plain_converts_answers_and_refuses_what_it_cannot_in_one_line():
    class Name(str):
        def __eq__(self, other):
            return True

        __hash__ = str.__hash__

    converted = plain({"a": [np.float64(0.5), Name("delta"), (1, torch.ones(2).as_subclass(
        _LyingTensor))]})
    value, name, (one, tensor) = converted["a"]
    assert type(value) is float and type(name) is str and type(one) is int
    assert type(tensor) is torch.Tensor and not torch.allclose(tensor, torch.zeros(2))
    assert check("08.structure", {k: Name(v) for k, v in solution("08.structure").items()},
                 quiet=True)  # a str subclass is judged on its plain value: right
    verdict = check("08.structure", {**solution("08.structure"), "sanger": _AlwaysEqual()},
                    quiet=True)
    assert not verdict and verdict.message == (
        "08.structure: not yet. Hint: expected numbers, strings, tensors or arrays (or lists, "
        "tuples and dicts of them) or a function, got a _AlwaysEqual")
    assert check("01.oja-euler-step", plain(solution("01.oja-euler-step")), quiet=True)
