"""The set-up files agree: environment.yml and pyproject.toml list the same packages."""

import re
import tomllib
from pathlib import Path

import fwplab

ROOT = Path(__file__).resolve().parents[1]
# conda's name for a package whose PyPI name differs.
CONDA_NAMES = {"pytorch": "torch"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def _pyproject_packages() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    return {_name(r) for r in requirements}


def _environment_packages() -> set[str]:
    names = set()
    text = (ROOT / "environment.yml").read_text()
    for line in text[text.index("dependencies:"):].splitlines():
        item = re.match(r"^\s+- (?!-e )([A-Za-z][\w.-]*)", line)
        if item and item.group(1) not in ("python", "pip"):
            names.add(CONDA_NAMES.get(item.group(1).lower(), item.group(1).lower()))
    return names


def test_environment_yml_and_pyproject_list_the_same_packages():
    assert _environment_packages() == _pyproject_packages()


def test_torch_requirement_is_a_range_not_a_pin():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_requirement = next(r for r in project["dependencies"] if _name(r) == "torch")
    assert ">=" in torch_requirement and "==" not in torch_requirement


def test_public_names_are_exported_explicitly():
    for name in fwplab.__all__:
        assert hasattr(fwplab, name), name
    assert len(set(fwplab.__all__)) == len(fwplab.__all__)
