"""The committed notebooks: one frame for all, no stale outputs, no personal metadata."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _root_conftest():
    """The repository's top-level conftest.py, which holds nbval's stderr rule
    (``tests/conftest.py`` is another module of the same name)."""
    spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_NBVAL_RULES = _root_conftest()
STDERR_EXPECTED, stderr_text = _NBVAL_RULES.STDERR_EXPECTED, _NBVAL_RULES.stderr_text
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _cells(path):
    return json.loads(path.read_text())["cells"]


def _source(cell) -> str:
    return "".join(cell["source"])


def test_the_sequence_is_numbered_without_gaps():
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 7, numbers


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_frame(path):
    cells = _cells(path)
    first = _source(cells[0])
    assert cells[0]["cell_type"] == "markdown"
    assert "What you will learn" in first and "What you need to know" in first, path.name
    headings = [_source(c) for c in cells if c["cell_type"] == "markdown"]
    summary = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown"
               and re.search(r"^## Summary", _source(c), re.M)]
    exercises = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown"
                 and re.search(r"^## Exercises", _source(c), re.M)]
    assert summary and exercises and summary[0] < exercises[0], path.name
    checks = sum("check(" in _source(c) for c in cells[exercises[0]:] if c["cell_type"] == "code")
    assert 2 <= checks <= 4, (path.name, checks)
    last = _source(cells[-1])
    assert cells[-1]["cell_type"] == "markdown" and ("Next" in last or "README" in last), path.name
    links = re.findall(r"\]\(([^)#]+\.ipynb)\)", "\n".join(headings))
    for link in links:
        assert (path.parent / link).exists(), (path.name, link)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_stale_outputs_or_personal_metadata(path):
    notebook = json.loads(path.read_text())
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    assert "widgets" not in notebook["metadata"], f"{path.name}: a stale run's widget state"
    stamped = [i for i, c in enumerate(notebook["cells"]) if "execution" in c.get("metadata", {})]
    assert not stamped, f"{path.name}: cells {stamped} keep a stale run's execution times"
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = _source(cell)
        assert "sys.path" not in source, (path.name, source[:80])
        outputs = cell.get("outputs", [])
        assert all(o.get("output_type") != "error" for o in outputs), path.name
        if "NBVAL_CHECK_OUTPUT" not in source:
            assert not outputs, f"{path.name}: stale output in a cell not checked by nbval"
        assert not stderr_text(outputs) or STDERR_EXPECTED in source, path.name


def test_stderr_text_picks_only_stderr_streams():
    outputs = [{"output_type": "stream", "name": "stdout", "text": "fine\n"},
               {"output_type": "stream", "name": "stderr", "text": "warn\n"},
               {"output_type": "display_data", "data": {}}]
    assert stderr_text(outputs) == "warn\n"
    assert stderr_text(outputs[:1]) == "" and stderr_text(None) == ""


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_exercise_cells_are_the_registered_ones_and_show_no_solution(path):
    from fwplab.exercises import exercises_of

    code = [_source(c) for c in _cells(path) if c["cell_type"] == "code"]
    asked = re.findall(r"""check\(\s*["']([^"']+)["']""", "\n".join(code))
    registered = [e.key for e in exercises_of(int(path.name[:2]))]
    assert sorted(asked) == registered, (path.name, asked, registered)
    assert not any(re.search(r"\bsolution\(", source) for source in code), path.name
