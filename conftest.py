"""Notebook cells must not write to stderr: a student reads a red line as an error.

nbval (run with ``--nbval-lax``) checks only the outputs of cells marked
``# NBVAL_CHECK_OUTPUT``; this hook fails any notebook cell whose run printed to
stderr (warnings, build chatter, progress bars), unless the cell says it expects to with a
``# stderr expected: <why>`` comment.
"""

import pytest

STDERR_EXPECTED = "# stderr expected:"


def stderr_text(outputs) -> str:
    """The stderr stream text among a notebook cell's outputs (nbformat dicts)."""
    return "".join(
        out.get("text", "") for out in outputs or ()
        if out.get("output_type") == "stream" and out.get("name") == "stderr"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    cell = getattr(item, "cell", None)
    outputs = getattr(item, "test_outputs", None)
    if cell is not None and outputs is not None and STDERR_EXPECTED not in cell.source:
        text = stderr_text(outputs)
        if text.strip():
            raise AssertionError(f"the cell wrote to stderr:\n{text[:2000]}")
    return result
