"""Packaging: environment.yml and pyproject.toml agree, and a wheel install works on its own."""

import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

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


def test_the_declared_license_is_the_one_shipped():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    text = " ".join((ROOT / "LICENSE").read_text().split())
    assert project["license"] == "Apache-2.0"
    assert text.startswith("Apache License Version 2.0, January 2004")
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 10_000


def test_torch_requirement_is_a_range_not_a_pin():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_requirement = next(r for r in project["dependencies"] if _name(r) == "torch")
    assert ">=" in torch_requirement and "==" not in torch_requirement


def test_public_names_are_exported_explicitly():
    for name in fwplab.__all__:
        namespace = {}
        exec(f"from fwplab import {name}", namespace)
        assert namespace[name] is getattr(fwplab, name), name
        assert name in dir(fwplab), name
    assert len(set(fwplab.__all__)) == len(fwplab.__all__)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert fwplab.__version__ == project["version"]


def test_importing_the_package_does_not_load_torch():
    """``import fwplab`` (and so ``python -m fwplab --help``) imports each name on first use."""
    probe = ("import sys, fwplab; loaded = 'torch' in sys.modules; "
             "fwplab.build_model; print(loaded, 'torch' in sys.modules, fwplab.__version__)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    assert result.stdout.split() == ["False", "True", fwplab.__version__]
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        _ = fwplab.not_a_name


def test_a_wheel_installed_outside_the_checkout_trains_on_the_shipped_data(tmp_path):
    """``pip install .`` (not editable) carries the kernel source and JapaneseVowels."""
    wheels, target, run = tmp_path / "wheels", tmp_path / "site", tmp_path / "run"
    run.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "--quiet"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(ROOT)], check=True, cwd=tmp_path, capture_output=True)
    (wheel,) = wheels.glob("fwplab-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names), names
    for shipped in ("fwplab/data/shipped/JapaneseVowels/JapaneseVowels_TRAIN.ts",
                    "fwplab/data/shipped/JapaneseVowels/JapaneseVowels_TEST.ts",
                    "fwplab/data/shipped/README.md", "fwplab/kernels/recurrence.cpp"):
        assert shipped in names, shipped
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    # The installed copy comes first on the path, ahead of the editable checkout.
    env = {**os.environ, "PYTHONPATH": str(target), "FWPLAB_KERNEL": "0", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "fwplab", "train", "--epochs", "1", "--out", str(run / "out")],
        cwd=run, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((run / "out" / "metrics.json").read_text())
    assert metrics["dataset"] == "japanese-vowels" and metrics["test_accuracy"] > 1 / 9
    where = subprocess.run([sys.executable, "-c", "import fwplab; print(fwplab.__file__)"],
                           cwd=run, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.strip().startswith(str(target))
