"""Every shell command in README.md and docs/*.md works: the default suite checks each one as typed (config
file, preset and overrides load; every flag exists; scripts and binaries are there), and the slow suite runs
them all, page by page, at smoke scale on the small real-data subsets (tests/docs_commands.py)."""

from __future__ import annotations

import functools
import importlib
import os
import re
import subprocess
from pathlib import Path
from sys import executable

import pytest

from pikagen_jax.config_utils import load_config
from tests.conftest import REPO
from tests.docs_commands import (
    DOC_PAGES,
    Sandbox,
    all_commands,
    commands_in,
    config_of,
    config_overrides,
    flag_value,
    program,
    split_env,
)

ARGPARSE_MODULES = ("pikagen_jax.generate", "pikagen_jax.evaluate", "data_prep.build", "pikagen_jax.export",
                    "pikagen_jax.check_workdir", "pikagen_jax.demo")
ABSL_MODULES = ("pikagen_jax.plot_curves", "pikagen_jax.l1.sweep")
LAUNCH_FLAGS = ("--config", "--workdir", "--coordinator_address", "--num_processes", "--process_id")


@functools.cache
def _absl_flag_names(module_name: str) -> set[str]:
    """The absl flags a module defines (its own, as `--helpshort` lists them), read in a subprocess so that
    modules which define the same flag names do not collide in this process's absl registry."""
    proc = subprocess.run([executable, "-m", module_name, "--helpshort"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    names = set(re.findall(r"^\s+--(?:\[no\])?([A-Za-z0-9_]+)", proc.stdout, flags=re.M))
    assert names, f"python -m {module_name} --helpshort listed no flags:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    return names


def _args(words: list[str]) -> list[str]:
    _, words = split_env(words)
    if Path(words[0]).name.startswith("python"):
        return words[3:] if words[1] == "-m" else words[2:]
    return words[2:] if words[0] == "bash" else words[1:]


def test_the_pages_have_commands_and_the_readme_stays_short():
    commands = all_commands()
    assert len(commands) >= 20
    assert {c.page for c in commands} >= {REPO / "README.md", REPO / "docs" / "training.md"}
    assert len((REPO / "README.md").read_bytes()) <= 10_500, "README.md should stay a short entry page (~10 KB)"
    for page in DOC_PAGES:  # every docs page is linked from the README
        if page.parent.name == "docs":
            assert f"docs/{page.name}" in (REPO / "README.md").read_text(encoding="utf-8"), page.name


@pytest.mark.parametrize("command", all_commands(), ids=lambda c: c.where)
def test_documented_command_is_well_formed(command):
    name, words = program(command.words), split_env(command.words)[1]
    args = _args(command.words)
    if name == "launch.py":
        path, _, preset = config_of(words)
        load_config(f"{path}:{preset}" if preset else path, config_overrides(words))  # keys and values as typed
        assert flag_value(words, "--workdir"), f"{command.where}: launch.py needs --workdir"
        unknown = [w for w in args if not w.startswith(tuple(f"{f}=" for f in LAUNCH_FLAGS) + ("--config.",))]
        assert not unknown, f"{command.where}: unknown launch.py argument(s) {unknown}"
    elif name in ARGPARSE_MODULES:
        module = importlib.import_module(name)
        module.parse_args(args)  # argparse exits (SystemExit) on an unknown flag or a bad value
    elif name in ABSL_MODULES:
        defined = _absl_flag_names(name)
        given = {w.split("=", 1)[0].removeprefix("--").removeprefix("no") for w in args if w.startswith("--")}
        assert given <= defined, f"{command.where}: unknown flag(s) {sorted(given - defined)}"
        if name == "pikagen_jax.l1.sweep":
            sets = [w.split("=", 1)[1] for w in args if w.startswith("--set=")]
            load_config(flag_value(args, "--config") or "configs/l1.py", sets)
    elif name == "tensorboard":
        assert (Path(executable).parent / "tensorboard").is_file()
    elif name.endswith(".sh"):
        assert (REPO / name).is_file(), f"{command.where}: no script {name}"
    else:
        pytest.fail(f"{command.where}: no check for {name!r}; teach tests/test_docs_commands.py about it")


@pytest.mark.slow  # runs every command at smoke scale: tens of minutes on 2 cores
@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda p: p.name)
def test_documented_commands_run_at_smoke_scale(page, small_data, tmp_path):
    sandbox = Sandbox(tmp_path, small_data)
    for command in commands_in(page):
        sandbox.run(command)
        out = flag_value(command.words, "--out")
        if out and program(command.words) != "pikagen_jax.export":
            assert Path(sandbox.path(out)).exists(), f"{command.where}: wrote no {out}"
