"""Checked exercises for the notebooks.

Each notebook's exercises live in a module of this package (``fwplab.exercises.<topic>``)
and are registered once, as :class:`Exercise` records, in :data:`EXERCISES` under a key
``"NN.name"`` (``NN`` is the notebook's number). A notebook cell reads::

    from fwplab.exercises import check
    answer = None  # your answer here
    check("01.oja-norm", answer)

:func:`check` never raises on a wrong answer: it prints a verdict (and a hint) and
returns a :class:`Verdict` that is truthy only for a right answer. The reference
solution of every exercise is :func:`solution`; the tests check that every solution
passes and every recorded wrong answer fails with a hint, so neither can rot.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

__all__ = ["EXERCISES", "Exercise", "Verdict", "check", "exercise", "solution", "exercises_of"]

#: Modules that register exercises, one per notebook, imported on first use.
TOPICS = (
    "learning_rules",
    "linear_transformers",
    "continuous_fwps",
    "irregular_series",
    "exploring",
    "scaling",
    "reproducing",
    "rule_design",
    "model_based_rl",
)


@dataclass(frozen=True)
class Exercise:
    """One checked exercise.

    Args:
        key: ``"NN.name"``, ``NN`` the notebook's two-digit number.
        question: the task, one or two sentences, as the notebook states it.
        judge: ``judge(answer) -> None`` for a right answer, else a hint (a string)
            that says what is off without giving the answer away.
        solution: ``solution() -> answer``, the reference solution.
        wrong_answers: ``wrong_answers() -> list`` of answers the judge must refuse
            (typical mistakes); the tests run them.
    """

    key: str
    question: str
    judge: Callable[[Any], Optional[str]]
    solution: Callable[[], Any]
    wrong_answers: Callable[[], list] = field(default=lambda: [])


#: Every registered exercise by key.
EXERCISES: dict[str, Exercise] = {}


def exercise(key: str, question: str, solution: Callable[[], Any],
             wrong_answers: Callable[[], list] = lambda: []):
    """Decorator registering a judge function as an :class:`Exercise` under ``key``."""

    def register(judge: Callable[[Any], Optional[str]]) -> Callable[[Any], Optional[str]]:
        if key in EXERCISES:
            raise ValueError(f"exercise {key!r} is registered twice")
        EXERCISES[key] = Exercise(key, question, judge, solution, wrong_answers)
        return judge

    return register


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`check`: truthy only for a right answer."""

    key: str
    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"Verdict({self.message!r})"

    def _ipython_display_(self) -> None:
        """Nothing more to show: :func:`check` has already printed the verdict."""


def _load_all() -> None:
    for topic in TOPICS:
        try:
            importlib.import_module(f"{__name__}.{topic}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{topic}":
                raise


def _get(key: str) -> Exercise:
    _load_all()
    try:
        return EXERCISES[key]
    except KeyError:
        raise ValueError(f"unknown exercise {key!r}; expected one of {sorted(EXERCISES)}") from None


def exercises_of(notebook: int) -> list[Exercise]:
    """The exercises of notebook number ``notebook``, in key order."""
    _load_all()
    prefix = f"{notebook:02d}."
    return [EXERCISES[k] for k in sorted(EXERCISES) if k.startswith(prefix)]


def check(key: str, answer: Any, quiet: bool = False) -> Verdict:
    """Judge ``answer`` to exercise ``key``; print and return the verdict.

    ``answer=None`` means "not attempted yet" and is reported as such.
    """
    item = _get(key)
    if answer is None:
        verdict = Verdict(key, False, f"{key}: not answered yet. {item.question}")
    else:
        try:
            hint = item.judge(answer)
        except Exception as error:  # a student's answer may fail in any way
            hint = f"checking the answer raised {type(error).__name__}: {error}"
        if hint is None:
            verdict = Verdict(key, True, f"{key}: correct.")
        else:
            verdict = Verdict(key, False, f"{key}: not yet. Hint: {hint}")
    if not quiet:
        print(verdict)
    return verdict


def solution(key: str) -> Any:
    """The reference solution of exercise ``key``."""
    return _get(key).solution()
