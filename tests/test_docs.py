"""The maths reference and the glossary in docs/: complete, consistent with the code, linked.

Checks that docs/maths.md names every model, every continuous rule and every official
parameter prefix (with the fwplab prefix the loader maps it to), that every
"docs/maths.md, section N" reference in the repository points at a section that exists,
that every relative Markdown link in README.md, docs/ and the notebooks resolves, that
the speed section's numbers are the package's, and that nothing cites a document
outside the repository.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import fwplab
from fwplab.benchmarking import SPEECH_COMMANDS, fast_path_flops
from fwplab.models import OFFICIAL_NAMES, OFFICIAL_UNUSED
from fwplab.rules.fast_weight import FAST_WEIGHT_RULES
from fwplab.solvers import stage_layout

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MATHS = DOCS / "maths.md"

#: Where the repository's text lives (README.md too); searched for references and citations.
SEARCHED = ("fwplab", "tests", "notebooks", "benchmarks", "docs")
TEXT_SUFFIXES = {".py", ".md", ".ipynb", ".cpp", ".json", ".toml", ".txt", ".yml", ".yaml", ".cfg"}

#: The section numbers the package, tests and notebooks refer to.
SECTIONS = ("1", "2", "3", "4", "4.1", "4.2", "4.3", "4.4", "4.5", "4.6", "5", "6", "7", "8",
            "8.1", "8.2", "8.3", "8.4")

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.MULTILINE)
#: "docs/maths.md, section 4.4", "sections 4.1-4.2", "sections 4.1, 4.2 and 4.4", and the
#: notebooks' "[maths reference](../docs/maths.md), section 4.2".
SECTION_REFERENCE = re.compile(
    r"maths\.md\)?,?\s*sections?\s+(\d+(?:\.\d+)?(?:(?:\s*[-,]\s*|\s+and\s+)\d+(?:\.\d+)?)*)"
)
SECTION_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _maths() -> str:
    return MATHS.read_text(encoding="utf-8")


def _section(text: str, number: str) -> str:
    """The text of section ``number``, its subsections included."""
    headings = list(HEADING.finditer(text))
    for i, heading in enumerate(headings):
        if re.match(rf"{re.escape(number)}\.?\s", heading.group(2)):
            level = len(heading.group(1))
            end = next((h.start() for h in headings[i + 1:] if len(h.group(1)) <= level),
                       len(text))
            return text[heading.end():end]
    raise AssertionError(f"docs/maths.md has no section {number}")


def _table_rows(text: str) -> list[list[str]]:
    """Cells of every Markdown table row in ``text`` (separator rows left out)."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("|") and not re.fullmatch(r"\|[\s:|-]+\|", line):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\$", "", heading).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(markdown: str) -> set[str]:
    return {_slug(match.group(2)) for match in HEADING.finditer(_without_code(markdown))}


def _without_code(markdown: str) -> str:
    return INLINE_CODE.sub("", FENCE.sub("", markdown))


def _markdown_sources() -> list[tuple[Path, str]]:
    """README.md, every docs/*.md and the markdown cells of every notebook."""
    sources = [(ROOT / "README.md", (ROOT / "README.md").read_text(encoding="utf-8"))]
    sources += [(path, path.read_text(encoding="utf-8")) for path in sorted(DOCS.glob("*.md"))]
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        markdown = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        sources.append((path, markdown))
    return sources


def _repository_texts() -> list[tuple[Path, str]]:
    paths = [ROOT / "README.md"]
    for folder in SEARCHED:
        paths += [p for p in sorted((ROOT / folder).rglob("*"))
                  if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts]
    return [(p, p.read_text(encoding="utf-8", errors="replace")) for p in paths]


def test_maths_has_every_numbered_section_in_order():
    numbers = [m.group(1) for m in re.finditer(r"^#{2,3}\s+(\d+(?:\.\d+)?)\.?\s", _maths(),
                                                re.MULTILINE)]
    assert tuple(numbers) == SECTIONS


@pytest.mark.parametrize("name", list(fwplab.MODELS))
def test_maths_names_every_model(name):
    assert f"`{name}`" in _maths()


@pytest.mark.parametrize("rule", list(FAST_WEIGHT_RULES))
def test_maths_names_every_continuous_rule(rule):
    assert f"`{rule}`" in _section(_maths(), "4")


def test_official_name_table_matches_the_loader():
    rows = {row[0].strip("`"): row[1].strip("`") for row in _table_rows(_section(_maths(), "4.4"))
            if row[0].startswith("`")}
    for official, ours in OFFICIAL_NAMES.items():
        assert official in rows, f"section 4.4 table lacks the official prefix {official}"
        assert rows[official] == ours, (official, rows[official], ours)
    for official in OFFICIAL_UNUSED:
        assert official in rows, f"section 4.4 table lacks the unused official prefix {official}"


def test_the_three_oja_rules_are_named_apart():
    text = _maths()
    for name in ("Oja's rule", "the Oja-style FWP update", "the softmax Oja rule"):
        assert name in text, name
    glossary = (DOCS / "glossary.md").read_text(encoding="utf-8")
    for name in ("Oja's rule", "The Oja-style FWP update", "The softmax Oja rule"):
        assert name in glossary, name


def test_every_section_reference_points_at_an_existing_section():
    references = []
    for path, text in _repository_texts():
        for match in SECTION_REFERENCE.finditer(text):
            references += [(path, number) for number in SECTION_NUMBER.findall(match.group(1))]
    assert references, "expected the package to refer to docs/maths.md by section"
    missing = [f"{path.relative_to(ROOT)}: section {number}" for path, number in references
               if number not in SECTIONS]
    assert not missing, missing


def test_relative_links_resolve():
    broken = []
    for source, markdown in _markdown_sources():
        for target in LINK.findall(_without_code(markdown)):
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
                continue  # http:, https:, mailto:
            file_part, _, anchor = target.partition("#")
            destination = (source.parent / file_part).resolve() if file_part else source
            where = f"{source.relative_to(ROOT)} -> {target}"
            if not destination.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and destination.suffix == ".md" and \
                    anchor not in _anchors(destination.read_text(encoding="utf-8")):
                broken.append(f"{where} (no such heading)")
    assert not broken, broken


#: Names of the project's private working documents, which readers cannot open: the
#: specification (its upper-case file name, spelt here without naming it) and its folder.
OUTSIDE_NAMES = ("spec".upper(), "/shared/")


def test_nothing_cites_documents_outside_the_repository():
    this_file = Path(__file__).resolve()
    citing = [f"{path.relative_to(ROOT)}: {needle!r}"
              for path, text in _repository_texts() if path.resolve() != this_file
              for needle in OUTSIDE_NAMES if needle in text]
    assert not citing, citing


def test_speed_section_numbers_match_the_package():
    shape = SPEECH_COMMANDS
    text = " ".join(_section(_maths(), "7").split())
    assert (f"{shape['length']} observation times" in text
            and f"$C = {shape['channels']}$" in text and f"$H = {shape['hidden_channels']}$" in text
            and f"{shape['num_heads']} heads" in text and f"$F = {shape['ff_channels']}$" in text)
    steps, per_step = shape["length"] - 1, stage_layout("rk4").per_step
    assert f"{steps} \\cdot {per_step} + 1 = {steps * per_step + 1}$ stage points" in text
    flops = fast_path_flops("delta_cde", shape["channels"], shape["hidden_channels"],
                            shape["num_heads"], shape["length"], batch=128)
    assert f"at batch 128 the count is about {flops / 1e9:.1f} GFLOP" in text
