"""The package's layering holds (import-linter contracts in pyproject.toml): entry points -> run_sampler ->
systems -> training -> metrics -> models -> losses -> data, no system imports another, no import cycles;
and every top-level module of the package has a place in the layers."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO


def _contracts() -> list[dict]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_import_contracts_are_kept():
    if shutil.which("lint-imports", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    proc = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-logo", "--no-cache"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    kept = [line for line in proc.stdout.splitlines() if line.endswith("KEPT")]
    assert len(kept) == len(_contracts()) == 2, proc.stdout


def test_every_top_level_module_is_in_a_layer():
    layers = next(c for c in _contracts() if c["id"] == "layers")["layers"]
    placed = {name.strip() for layer in layers for name in layer.replace(":", "|").split("|")}
    package = REPO / "pikagen_jax"
    modules = {f"pikagen_jax.{p.stem}" for p in package.glob("*.py") if p.name != "__init__.py"}
    modules |= {f"pikagen_jax.{p.parent.name}" for p in package.glob("*/__init__.py")}
    assert modules - placed == set(), "new top-level modules need a layer in pyproject.toml [tool.importlinter]"
    assert placed - modules == set(), "pyproject.toml names modules that do not exist"
