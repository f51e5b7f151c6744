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

__all__ = ["EXERCISES", "Exercise", "UnplainAnswer", "Verdict", "check", "exercise", "exercises_of",
           "plain", "solution"]

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


class UnplainAnswer(TypeError):
    """An answer (or a value an answer function returns) that :func:`plain` cannot convert."""


#: How deeply lists, tuples and dicts may nest in an answer.
MAX_NESTING = 20


def plain(answer: Any, depth: int = 0) -> Any:
    """``answer`` rebuilt from plain types, so that judging it runs no code of the answer's.

    An answer's own types could make any comparison pass (an object whose ``==`` is
    always true, a tensor subclass whose ``allclose`` is); after this the judges compare
    only values of Python's and torch's own types:

    * ``None``, ``bool``: kept; ``int``, ``float``, ``str`` and their subclasses (NumPy's
      ``float64``, ``str`` subclasses): the plain ``int``, ``float``, ``str`` value;
    * NumPy scalars: ``.item()``; NumPy arrays of numbers: a plain ``ndarray`` copy;
    * torch tensors, subclasses included: a detached plain :class:`torch.Tensor` copy;
    * lists, tuples (named tuples too), sets and dicts: plain ones of plain items;
    * functions and other callables: a wrapper (``functools.wraps``, so the judges still
      read the function's code) that converts every value it returns.

    Raises:
        UnplainAnswer: any other type (one line naming it and what the checks accept).
    """
    import functools

    import numpy as np
    import torch

    if depth > MAX_NESTING:
        raise UnplainAnswer(f"the answer nests deeper than {MAX_NESTING} levels")
    if answer is None or type(answer) is bool:
        return answer
    for kind in (int, float, str):  # bool is an int subclass, handled above
        if isinstance(answer, kind):
            return getattr(kind, f"__{kind.__name__}__")(answer)
    if isinstance(answer, np.generic):
        return plain(answer.item(), depth + 1)
    if isinstance(answer, np.ndarray):
        if answer.dtype.kind not in "biuf":
            raise UnplainAnswer(f"expected an array of numbers, got one of dtype {answer.dtype}")
        return np.array(answer, copy=True, subok=False)
    if isinstance(answer, torch.Tensor):
        tensor = torch.Tensor.as_subclass(answer, torch.Tensor)
        if type(tensor) is not torch.Tensor:
            raise UnplainAnswer(f"expected a tensor, got a {type(answer).__name__} that does "
                                "not convert to torch.Tensor")
        return tensor.detach().clone()
    if isinstance(answer, (list, tuple, set, frozenset)):
        kind = next(k for k in (list, tuple, set, frozenset) if isinstance(answer, k))
        return kind(plain(item, depth + 1) for item in answer)
    if isinstance(answer, dict):
        return {plain(k, depth + 1): plain(v, depth + 1) for k, v in answer.items()}
    if callable(answer) and not isinstance(answer, type):
        @functools.wraps(answer)
        def returning_plain_values(*args, **kwargs):
            return plain(answer(*args, **kwargs))

        return returning_plain_values
    raise UnplainAnswer(
        f"expected numbers, strings, tensors or arrays (or lists, tuples and dicts of them) "
        f"or a function, got a {type(answer).__name__}")


def check(key: str, answer: Any, quiet: bool = False) -> Verdict:
    """Judge ``answer`` to exercise ``key``; print and return the verdict.

    ``answer=None`` means "not attempted yet" and is reported as such. The answer is
    first rebuilt from plain types (:func:`plain`): what a judge compares is a plain
    tensor, number, string or container, and the values a function returns are too. A
    type that does not convert is refused with one line naming it.
    """
    item = _get(key)
    if answer is None:
        verdict = Verdict(key, False, f"{key}: not answered yet. {item.question}")
    else:
        try:
            hint = item.judge(plain(answer))
        except UnplainAnswer as error:
            hint = str(error)
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


# ----------------------------------------------------------------------------- judging helpers
# Shared by the judges so that every exercise follows the same rules:
#
# * functions are run on fresh random inputs and sizes, drawn when the judge runs
#   (:func:`fresh_generator`), so a table of the checked outputs cannot pass;
# * the package's own implementation handed back (itself, wrapped, or called by name
#   from a thin wrapper) is refused (:func:`package_pass_through`);
# * tensors may come back as torch tensors, NumPy arrays or nested lists (:func:`as_tensor`);
# * a number typed by hand is right when it matches to three significant digits
#   (:data:`NUMBER_RTOL`, :func:`close_number`); a count must be a whole number
#   (:func:`as_count`).

#: Relative tolerance of a number typed by hand: three significant digits suffice.
NUMBER_RTOL = 5e-3


def fresh_generator():
    """A torch generator seeded from the operating system's entropy, new at every call."""
    import os

    import torch

    return torch.Generator().manual_seed(int.from_bytes(os.urandom(7), "little"))


def fresh_int(generator, low: int, high: int) -> int:
    """A random integer in ``[low, high]`` drawn from ``generator``."""
    import torch

    return int(torch.randint(low, high + 1, (), generator=generator))


def fresh_float(generator, low: float, high: float) -> float:
    """A random float in ``[low, high)`` drawn from ``generator``."""
    import torch

    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def as_tensor(answer: Any, dtype=None):
    """``answer`` (torch tensor, NumPy array, number or nested list) as a torch tensor.

    Raises TypeError for anything else, so that a judge's hint can say what to return.
    """
    import numpy as np
    import torch

    if isinstance(answer, torch.Tensor):
        tensor = answer.detach()
    elif isinstance(answer, (np.ndarray, np.generic, list, tuple, int, float)) and not isinstance(
        answer, bool
    ):
        tensor = torch.as_tensor(np.asarray(answer, dtype=np.float64))
    else:
        raise TypeError(f"expected a tensor (torch or NumPy), got {type(answer).__name__}")
    return tensor if dtype is None else tensor.to(dtype)


def as_number(answer: Any) -> float:
    """One number from a Python/NumPy number or a one-element tensor/array."""
    if isinstance(answer, bool):
        raise TypeError("expected a number, got a bool")
    tensor = as_tensor(answer)
    if tensor.numel() != 1:
        raise ValueError(f"expected one number, got shape {tuple(tensor.shape)}")
    return float(tensor.reshape(()))


def as_count(answer: Any) -> Optional[int]:
    """``answer`` as an int when it is a whole number (``640`` or ``640.0``), else ``None``."""
    import math

    try:
        value = as_number(answer)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value) or value != math.floor(value):
        return None
    return int(value)


def close_number(value: float, expected: float) -> bool:
    """The tolerance policy of numbers typed by hand (relative :data:`NUMBER_RTOL`)."""
    import math

    return math.isclose(value, expected, rel_tol=NUMBER_RTOL, abs_tol=1e-12)


def near_miss(value: float, expected: float) -> Optional[str]:
    """A hint for a number that is close but not within :data:`NUMBER_RTOL`, else ``None``."""
    import math

    if math.isclose(value, expected, rel_tol=0.05) and not close_number(value, expected):
        return ("close, but not within the tolerance: give the number to at least three "
                "significant digits (relative tolerance 0.5 %)")
    return None


def _code_objects(code) -> list:
    found = [code]
    for constant in code.co_consts:
        if hasattr(constant, "co_code"):
            found.extend(_code_objects(constant))
    return found


def _unwrap(function: Any) -> Any:
    import functools
    import inspect

    seen = set()
    while id(function) not in seen:
        seen.add(id(function))
        if isinstance(function, functools.partial):
            function = function.func
            continue
        unwrapped = inspect.unwrap(function) if callable(function) else function
        if unwrapped is not function:
            function = unwrapped
            continue
        if inspect.ismethod(function):
            function = function.__func__
            continue
        break
    return function


def _is_package_function(function: Any) -> bool:
    module = getattr(function, "__module__", None) or ""
    return (module == "fwplab" or module.startswith("fwplab.")) and not module.startswith(
        __name__
    )


def package_pass_through(answer: Any, names: tuple[str, ...]) -> Optional[str]:
    """A hint when ``answer`` is, wraps or calls by name one of the package's own functions.

    ``names`` are the package functions that compute the exercise's answer (for example
    ``("delta_rule",)``). Refused: any function defined in ``fwplab`` outside this
    package (the function itself, a ``functools.partial`` or decorated wrapper of it, or
    one sharing its code), and a function whose code refers to one of ``names``.
    """
    import fwplab

    function = _unwrap(answer)
    forbidden = {name: getattr(_find_package_function(fwplab, name), "__code__", None)
                 for name in names}
    code = getattr(function, "__code__", None)
    if _is_package_function(function) or (code is not None and code in forbidden.values()):
        shown = getattr(function, "__name__", type(function).__name__)
        return (f"that is fwplab's own {shown}; write the computation yourself (the check "
                "refuses the package's functions handed back)")
    if code is not None:
        used = {name for c in _code_objects(code)
                for name in c.co_names + c.co_freevars} & set(names)
        if used:
            return (f"write the computation yourself instead of calling fwplab's "
                    f"{', '.join(sorted(used))} (the check reads the names your function uses)")
    return None


def _find_package_function(package: Any, name: str) -> Any:
    """``name`` in the package or one of its already imported modules (nothing is imported)."""
    import sys

    if hasattr(package, name):
        return getattr(package, name)
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith(package.__name__ + ".") and hasattr(module, name):
            return getattr(module, name)
    return None


def uses_a_loop(answer: Any) -> bool:
    """Whether the code of ``answer`` (nested functions and comprehensions included) loops.

    Reads the compiled code for ``for`` loops and comprehensions (a ``FOR_ITER``) and
    ``while`` loops (a backward jump); it needs no source file, so lambdas count too.
    Helpers that the function calls are not read.
    """
    import dis

    code = getattr(_unwrap(answer), "__code__", None)
    if code is None:
        return False
    for each in _code_objects(code):
        for instruction in dis.get_instructions(each):
            name = instruction.opname
            if name == "FOR_ITER" or "BACKWARD" in name:
                return True
            if name in ("JUMP_ABSOLUTE",) and instruction.argval <= instruction.offset:
                return True
    return False
