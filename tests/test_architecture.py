"""The import contract (pyproject.toml's [tool.importlinter]): every module has a layer, and the contract bites."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("distill", "students", "teachers")
LINT = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))


def contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def layered() -> set[str]:
    return {name.strip() for layer in contracts()["layers"]["layers"] for name in layer.replace("|", ":").split(":")}


def test_every_module_has_a_layer():
    """A new module must be placed in a layer, or the contract would not see it import upwards."""
    modules = set()
    for package in ("distill",):
        for path in (ROOT / package).iterdir():
            if path.name.startswith("_") and path.name != "__main__.py" or path.name == "__pycache__":
                continue
            if path.suffix == ".py" or (path / "__init__.py").is_file():
                modules.add(f"{package}.{path.stem}")
    layers = layered()
    assert not modules - layers, f"modules without a layer in pyproject.toml: {sorted(modules - layers)}"
    assert {"students", "teachers"} <= layers


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": str(Path(sys.executable).parent)})


@pytest.mark.parametrize("planted", [
    ("distill/names.py", "import distill.cli\n"),  # a leaf helper importing the CLI: upwards
    ("students/bi_encoder.py", "import teachers.cross_encoder\n"),  # models are independent
    ("distill/optim.py", "import distill.backbones\n"),  # legal by layers (same layer)...
])
def test_the_contract_fails_on_a_planted_import(tmp_path, planted):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    assert lint(tmp_path).returncode == 0, "the contract must hold on the tree as it is"
    file, line = planted
    if file == "distill/optim.py":  # ...and a cycle when backbones imports optim back
        (tmp_path / "distill/backbones.py").write_text("import distill.optim\n" +
                                                       (tmp_path / "distill/backbones.py").read_text())
    (tmp_path / file).write_text(line + (tmp_path / file).read_text())
    result = lint(tmp_path)
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout[-2000:]
