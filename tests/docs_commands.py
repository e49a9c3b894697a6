"""The shell commands of README.md and docs/*.md, and how the docs tests run them at smoke scale.

Every line of a fenced ```bash block is a command (a trailing backslash continues it; `#` starts a comment).
A block right after an HTML comment `<!-- docs-test: skip: <reason> -->` is not run (only `bash scripts/test.sh`,
which is the test suite itself, needs that). Commands are run page by page, in order, in one sandbox per page:

- `python launch.py --config=configs/S.py[:preset] ...` runs the system's `:smoke` preset with the command's own
  overrides, then `SMOKE_OVERRIDES` that keep it to a few steps on the small real-data subset;
- `--workdir`, `--out`, `--out_dir`, `--data_dir`, `--model` and `--logdir` paths move into the sandbox;
- `data_prep.build --source_dir=../shared/data/...` builds from the 40-species subsets of the same sources;
- `tensorboard` and `pikagen_jax.demo` are servers: started, checked to answer on localhost, stopped;
- a command ending in `&` runs in the background while the next ones run (then both must succeed), and every
  `--coordinator_address` gets a free localhost port (the same for the same address on one page).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.localhost import free_port, wait_until_listening

DOC_PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SKIP_MARK = re.compile(r"<!--\s*docs-test:\s*skip:\s*(.+?)\s*-->")
SYSTEMS = ("gan", "l1", "diffusion", "dcgan", "alignment")
# After the command's own overrides: a few steps, checkpoints and samples within them, no worker processes.
SMOKE_OVERRIDES = {
    "gan": ["train.num_steps=2", "checkpoint.every_steps=2", "train.sample_every=2", "eval.every_steps=0"],
    "l1": ["train.num_steps=2", "checkpoint.every_steps=2", "eval.every_steps=2"],
    "diffusion": [f"stages.{stage}.num_steps=2" for stage in ("vae", "unet", "text")] + ["checkpoint.every_steps=2"],
    "dcgan": ["train.num_steps=2", "checkpoint.every_steps=2", "train.sample_every=2"],
    "alignment": ["train.num_steps=2", "checkpoint.every_steps=2"],
}
PATH_FLAGS = ("--workdir", "--out", "--out_dir", "--data_dir", "--model", "--logdir", "--models")
SERVERS = {"tensorboard": "--port", "pikagen_jax.demo": "--port"}


@dataclasses.dataclass(frozen=True)
class DocCommand:
    """One command of a page: where it is and its words (environment assignments first)."""

    page: Path
    line: int
    text: str

    @property
    def words(self) -> list[str]:
        words = shlex.split(self.text, comments=True)
        return words[:-1] if words and words[-1] == "&" else words

    @property
    def background(self) -> bool:
        words = shlex.split(self.text, comments=True)
        return bool(words) and words[-1] == "&"

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def commands_in(page: Path) -> list[DocCommand]:
    """The runnable commands of a Markdown page, in order."""
    commands, block, skip, start = [], None, False, 0
    pending, pending_line = "", 0
    previous = ""
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if block is None:
            if stripped.startswith("```"):
                block = stripped[3:].strip()
                skip = bool(SKIP_MARK.search(previous))
                start = number
            if stripped:
                previous = stripped
            continue
        if stripped.startswith("```"):
            if pending:
                raise ValueError(f"{page}:{start}: a command ends with a backslash at the end of its block")
            block = None
            previous = ""
            continue
        if block != "bash" or skip:
            continue
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        pending_line = pending_line if pending else number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        commands.append(DocCommand(page, pending_line, pending + stripped))
        pending = ""
    return commands


def all_commands() -> list[DocCommand]:
    return [command for page in DOC_PAGES for command in commands_in(page)]


def split_env(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """Leading NAME=value words (environment for the command) and the rest."""
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        name, _, value = words[0].partition("=")
        env[name] = value
        words = words[1:]
    return env, words


def flag_value(words: list[str], name: str) -> str | None:
    """The value of `--name=value` (last one wins), or None."""
    value = None
    for word in words:
        if word.startswith(name + "="):
            value = word.split("=", 1)[1]
    return value


def program(words: list[str]) -> str:
    """What a command runs: 'launch.py', a module name ('pikagen_jax.generate'), a script path or a binary."""
    _, words = split_env(words)
    if not words:
        return ""
    if Path(words[0]).name in ("python", "python3"):
        if len(words) > 2 and words[1] == "-m":
            return words[2]
        return words[1] if len(words) > 1 else "python"
    if words[0] == "bash" and len(words) > 1:
        return words[1]
    return Path(words[0]).name


def config_of(words: list[str]) -> tuple[str, str, str]:
    """(config file, system, preset) of a launch.py / sweep command."""
    value = flag_value(words, "--config")
    if value is None:
        raise ValueError("no --config=... in the command")
    path, _, preset = value.partition(":")
    system = Path(path).stem
    if system not in SYSTEMS:
        raise ValueError(f"unknown config {path}")
    return path, system, preset


def config_overrides(words: list[str]) -> list[str]:
    """The command's `--config.key=value` overrides as 'key=value'."""
    return [word[len("--config."):] for word in words if word.startswith("--config.")]


@dataclasses.dataclass
class Sandbox:
    """Where one page's commands run: a temporary root, the small datasets and the test interpreter."""

    root: Path
    small_data: dict
    ports: dict = dataclasses.field(default_factory=dict)
    running: list = dataclasses.field(default_factory=list)

    def path(self, value: str) -> str:
        """A user path moved under the sandbox (absolute and relative paths alike)."""
        if not value:
            return value
        return str(self.root / value.lstrip("/").replace("..", "up"))

    def source_dir(self, value: str) -> str:
        if "pokemon_kaggle" in value:
            return str(self.small_data["kaggle_src"])
        if "pokeapi" in value:
            return str(self.small_data["pokeapi_src"])
        return self.path(value)

    def smoke_argv(self, command: DocCommand) -> tuple[list[str], dict[str, str]]:
        """The argv and environment that run `command` at smoke scale in this sandbox."""
        env, words = split_env(command.words)
        env = {**os.environ, **env, "JAX_PLATFORMS": "cpu", "JAX_THREEFRY_PARTITIONABLE": "false"}
        name = program(command.words)
        data = [f"data.data_dir={self.small_data['data_dir']}", f"data.dataset={self.small_data['kaggle']}",
                "data.worker_count=0"]
        rest = []
        for word in words[(3 if words[1:2] == ["-m"] else 2) if Path(words[0]).name.startswith("python") else 1:]:
            flag, sep, value = word.partition("=")
            if sep and flag in PATH_FLAGS:
                rest.append(f"{flag}={','.join(self.path(v) for v in value.split(','))}")
            elif sep and flag == "--source_dir":
                rest.append(f"{flag}={self.source_dir(value)}")
            elif sep and flag == "--split_file":
                rest.append(f"{flag}={self.small_split_file(value)}")
            elif sep and flag == "--config" and name in ("launch.py", "pikagen_jax.l1.sweep"):
                rest.append(f"--config={value.partition(':')[0]}:smoke")
            elif sep and flag == "--dataset":
                rest.append(f"--dataset={self.small_data['kaggle']}")
            elif sep and flag == "--coordinator_address":
                rest.append(f"{flag}=127.0.0.1:{self.ports.setdefault(value, free_port())}")
            else:
                rest.append(word)
        if name == "launch.py":
            _, system, _ = config_of(words)
            argv = [sys.executable, "launch.py", *rest, *(f"--config.{o}" for o in data + SMOKE_OVERRIDES[system])]
        elif name == "pikagen_jax.l1.sweep":
            argv = [sys.executable, "-m", name, *rest, *(f"--set={o}" for o in data + SMOKE_OVERRIDES["l1"])]
        elif name == "data_prep.build":
            argv = [sys.executable, "-m", name, *rest]
            if flag_value(rest, "--data_dir") is None:
                argv.append(f"--data_dir={self.root / 'data' / 'tfds'}")
        elif name.startswith("pikagen_jax.") or name.startswith("data_prep."):
            argv = [sys.executable, "-m", name, *rest]
            if name == "pikagen_jax.evaluate" and flag_value(rest, "--real_vs_real") and not flag_value(rest, "--workdir"):
                argv.append(f"--data_dir={self.small_data['data_dir']}")
        elif name == "tensorboard":
            argv = [str(Path(sys.executable).parent / "tensorboard"), *rest]
        elif name.endswith(".sh"):
            argv = ["bash", name, *rest]
            env.update(STEPS="2", WORKDIR=self.path("workdirs/quickstart"))
        else:
            raise ValueError(f"{command.where}: no smoke-scale rule for {name!r}")
        return argv, env

    def small_split_file(self, value: str) -> str:
        """A split file restricted to the species of the small Kaggle subset (the real one names all 898)."""
        import json

        split = json.loads(Path(REPO.parent / value.removeprefix("../")).read_text()) if value.startswith("../") \
            else json.loads(Path(value).read_text())
        kept = {int(line.split(";")[0]) for line in
                (Path(self.small_data["kaggle_src"]) / "pokemon_data.csv").read_text().splitlines()[1:]}
        small = {name: [n for n in numbers if n in kept] for name, numbers in split.items() if isinstance(numbers, list)}
        out = self.root / "split_small.json"
        out.write_text(json.dumps({**split, **small}))
        return str(out)

    def run(self, command: DocCommand, timeout: float = 900) -> subprocess.CompletedProcess:
        """Runs `command` at smoke scale (servers: until they answer on their port); fails with its log."""
        argv, env = self.smoke_argv(command)
        if program(command.words) in SERVERS:
            return self._run_server(command, argv, env, timeout)
        if command.background:
            self.running.append((command, subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                                           stderr=subprocess.PIPE, text=True)))
            return subprocess.CompletedProcess(argv, 0, "", "")
        try:
            proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
            assert proc.returncode == 0, f"{command.where}: `{command.text}` failed:\n{proc.stderr[-4000:]}"
        finally:
            self._wait_background(timeout)
        return proc

    def _wait_background(self, timeout: float) -> None:
        """The background commands started before must finish, successfully."""
        running, self.running = self.running, []
        for command, proc in running:
            try:
                _, err = proc.communicate(timeout=timeout)
            finally:
                if proc.poll() is None:
                    proc.kill()
            assert proc.returncode == 0, f"{command.where}: `{command.text}` (in the background) failed:\n{err[-4000:]}"

    def _run_server(self, command: DocCommand, argv: list[str], env: dict, timeout: float):
        port = free_port()
        argv = [*argv, f"{SERVERS[program(command.words)]}={port}"]
        server = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            if wait_until_listening(port, timeout, server):
                return subprocess.CompletedProcess(argv, 0, "", "")
            if server.poll() is not None:
                raise AssertionError(f"{command.where}: `{command.text}` exited:\n{server.stdout.read()[-4000:]}")
            raise AssertionError(f"{command.where}: `{command.text}` did not answer on port {port}")
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
