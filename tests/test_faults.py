"""Faults a training run survives, each injected into a real `launch.py` subprocess of the GAN smoke preset on the
small real data (6 steps, a checkpoint every step): kill -9 at random points of training and saving, truncated /
deleted / bit-flipped files in the latest checkpoint, a file-size limit during a save, a second run on the same
workdir, a read-only workdir. Every case must end with the run resumed from the newest intact step and the losses
after the resume equal to an uninterrupted run's (TensorBoard scalars). The in-process checks of the checkpoint
integrity logic and the workdir lock run in the default suite; the subprocess cases are slow."""

from __future__ import annotations

import glob
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from pikagen_jax.errors import NoIntactCheckpointError
from pikagen_jax.training import checkpoint_integrity as integrity
from pikagen_jax.training.checkpointing import Checkpointer
from pikagen_jax.training.workdir_lock import WorkdirLock, WorkdirLockedError
from tests.conftest import REPO
from tests.launch_helpers import FAST_INIT_ENV, kaggle_overrides

STEPS = 6
LOSSES = ("d_loss", "g_loss", "d_real", "d_fake")


# ------------------------------------------------------------------------------- damage to files (in process)


def _damage(step_dir: Path, how: str) -> None:
    data = max((Path(p) for p in glob.glob(str(step_dir / "**" / "d" / "*"), recursive=True)),
               key=lambda p: p.stat().st_size)
    if how == "truncate":
        with open(data, "r+b") as f:
            f.truncate(data.stat().st_size // 2)
    elif how == "delete":
        data.unlink()
    elif how == "bitflip":
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0x10
        data.write_bytes(bytes(raw))
    elif how == "metadata":
        (step_dir / "model" / "_METADATA").write_text("{")
    else:
        raise ValueError(how)


@pytest.mark.parametrize("how", ["truncate", "delete", "bitflip", "metadata"])
def test_a_damaged_latest_step_is_moved_aside_and_the_previous_one_restored(tmp_path, how):
    model = nnx.Linear(32, 32, rngs=nnx.Rngs(0))
    saved = {}
    with Checkpointer(tmp_path, every_steps=1) as checkpointer:
        for step in (1, 2, 3):
            model.kernel[...] = model.kernel[...] + 1.0
            saved[step] = np.asarray(model.kernel[...]).copy()
            checkpointer.save(step, {"model": model}, config={"step": step}, force=True)
    assert all(integrity.has_checksums(tmp_path / "checkpoints" / str(s)) for s in (1, 2, 3))
    _damage(tmp_path / "checkpoints" / "3", how)
    # read-only (generate / evaluate): skipped with a warning, left in place
    assert Checkpointer(tmp_path, read_only=True).restore_config() == {"step": 2}
    assert (tmp_path / "checkpoints" / "3").is_dir()
    target = nnx.Linear(32, 32, rngs=nnx.Rngs(1))
    assert Checkpointer(tmp_path).restore_latest_into({"model": target}) == 2  # a resume: moved aside
    np.testing.assert_array_equal(np.asarray(target.kernel[...]), saved[2])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2", "corrupt-3"]


def test_no_intact_step_is_one_clear_error_and_a_changed_model_is_not_damage(tmp_path):
    model = nnx.Linear(8, 8, rngs=nnx.Rngs(0))
    with Checkpointer(tmp_path, every_steps=1) as checkpointer:
        for step in (1, 2):
            checkpointer.save(step, {"model": model}, force=True)
    wider = nnx.Linear(8, 16, rngs=nnx.Rngs(0))
    from pikagen_jax.training.checkpointing import CheckpointMismatchError

    with pytest.raises(CheckpointMismatchError, match="intact but does not fit the model"):
        Checkpointer(tmp_path).restore_latest_into({"model": wider})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]  # nothing moved
    for step in (1, 2):
        _damage(tmp_path / "checkpoints" / str(step), "truncate")
    with pytest.raises(NoIntactCheckpointError, match=r"no intact checkpoint .*step 2: file .*step 1: file"):
        Checkpointer(tmp_path).restore_latest_into({"model": model})


def test_check_workdir_reports_which_step_restores(tmp_path, capsys):
    from pikagen_jax import check_workdir

    model = nnx.Linear(8, 8, rngs=nnx.Rngs(0))
    with Checkpointer(tmp_path, every_steps=1) as checkpointer:
        for step in (1, 2):
            checkpointer.save(step, {"model": model}, force=True)
    _damage(tmp_path / "checkpoints" / "2", "bitflip")
    assert check_workdir.main([f"--workdir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "would restore step 1" in out and "step 2: DAMAGED" in out and "SHA-256 mismatch" in out
    assert check_workdir.main([f"--workdir={tmp_path}", "--quarantine"]) == 0
    assert (tmp_path / "checkpoints" / "corrupt-2").is_dir()
    assert check_workdir.main([f"--workdir={tmp_path / 'nothing'}"]) == 2


def test_workdir_lock_refuses_a_live_holder_and_takes_over_a_stale_one(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / "lock"
        lock.write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename, "start": None,
                                    "since": "earlier"}))
        with pytest.raises(WorkdirLockedError, match=rf"in use by PID {holder.pid} on host"):
            WorkdirLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with WorkdirLock(tmp_path) as taken:  # the holder is gone: stale, taken over
        assert taken.held and json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / "lock").exists()  # released


# ------------------------------------------------------------------------------- real runs (subprocesses)


def _command(workdir: Path, small_data: dict, *extra: str) -> list[str]:
    return [sys.executable, "launch.py", "--config=configs/gan.py:smoke", f"--workdir={workdir}",
            *(f"--config.{o}" for o in kaggle_overrides(small_data)),
            f"--config.train.num_steps={STEPS}", "--config.checkpoint.every_steps=1",
            "--config.checkpoint.max_to_keep=10", "--config.train.log_every=1", *extra]


def _run(workdir: Path, small_data: dict, *extra: str, preexec=None, timeout: float = 600):
    return subprocess.run(_command(workdir, small_data, *extra), cwd=REPO, env=FAST_INIT_ENV, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=preexec)


def _losses(workdir: Path) -> dict[str, dict[int, float]]:
    from pikagen_jax.plot_curves import read_scalars

    scalars = read_scalars(workdir)
    return {name: scalars[name] for name in LOSSES}


def _assert_resumed_like_reference(workdir: Path, reference: dict, resumed_log: str) -> int:
    """The run finished at STEPS and its losses after the resume point equal the uninterrupted run's."""
    assert f"step {STEPS}/{STEPS}" in resumed_log, resumed_log[-2000:]
    start = 0
    for line in resumed_log.splitlines():
        if "resumed from" in line:
            start = int(line.rsplit("step", 1)[1].strip())
    losses = _losses(workdir)
    for name in LOSSES:
        for step in range(start + 1, STEPS + 1):
            np.testing.assert_allclose(losses[name][step], reference[name][step], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name} at step {step} (resumed from {start})")
    return start


@pytest.fixture(scope="module")
def reference(small_data, tmp_path_factory):
    """An uninterrupted 6-step run: its losses, and how long its steps took after compilation."""
    workdir = tmp_path_factory.mktemp("reference")
    started = time.monotonic()
    proc = _run(workdir, small_data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"losses": _losses(workdir), "seconds": time.monotonic() - started}


def _kill_after(workdir: Path, small_data: dict, delay: float) -> str:
    """Starts a run, waits for its first step, then `delay` seconds, and kills it with SIGKILL."""
    proc = subprocess.Popen(_command(workdir, small_data), cwd=REPO, env=FAST_INIT_ENV, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    log = []
    try:
        for line in proc.stderr:
            log.append(line)
            if f"step 1/{STEPS}" in line:
                break
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    return "".join(log)


@pytest.mark.slow
def test_kill_minus_9_at_twelve_random_points_then_resume(small_data, tmp_path, reference):
    rng = random.Random(0)
    budget = max(reference["seconds"] / 4, 2.0)  # after the first step: the rest of the run and its saves
    resumed_from = []
    for point in range(12):
        workdir = tmp_path / f"kill{point}"
        _kill_after(workdir, small_data, rng.uniform(0.0, budget))
        proc = _run(workdir, small_data)
        assert proc.returncode == 0, proc.stderr[-3000:]
        resumed_from.append(_assert_resumed_like_reference(workdir, reference["losses"], proc.stderr))
    assert len(set(resumed_from)) > 1, resumed_from  # the points fell at different steps


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncate", "delete", "bitflip"])
def test_damaged_latest_checkpoint_then_resume(small_data, tmp_path, reference, how):
    proc = _run(tmp_path, small_data, "--config.train.num_steps=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    step_dir = tmp_path / "checkpoints" / "4"
    data = max((Path(p) for p in glob.glob(str(step_dir / "generator" / "**" / "d" / "*"), recursive=True)),
               key=lambda p: p.stat().st_size)
    if how == "truncate":
        with open(data, "r+b") as f:
            f.truncate(10)
    elif how == "delete":
        data.unlink()
    else:
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        data.write_bytes(bytes(raw))
    proc = _run(tmp_path, small_data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint step 4" in proc.stderr and "is damaged" in proc.stderr and "corrupt-4" in proc.stderr
    assert _assert_resumed_like_reference(tmp_path, reference["losses"], proc.stderr) == 3
    assert (tmp_path / "checkpoints" / "corrupt-4").is_dir()


def _file_size_limit(limit: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


@pytest.mark.slow
def test_a_save_past_the_file_size_limit_stops_with_one_line_and_keeps_earlier_steps(small_data, tmp_path, reference):
    proc = _run(tmp_path, small_data, "--config.train.num_steps=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    largest = max(p.stat().st_size for p in (tmp_path / "checkpoints" / "3").rglob("*") if p.is_file())
    proc = _run(tmp_path, small_data, preexec=_file_size_limit(largest // 2))
    assert proc.returncode == 2, proc.stderr[-3000:]
    # our message is the last word; Orbax/TensorStore's writer threads print their own tracebacks before it
    # ("Event loop is closed", the OUT_OF_RANGE write), which we cannot silence from Python
    last = [line for line in proc.stderr.splitlines() if line.strip()][-2:]
    assert last[0].startswith("error: writing a checkpoint") and "PIKAGEN_JAX_DEBUG" in last[1], last
    assert 'launch.py", line' not in proc.stderr  # no traceback of ours
    assert [p.name for p in sorted((tmp_path / "checkpoints").iterdir()) if p.name.isdigit()][:3] == ["1", "2", "3"]
    proc = _run(tmp_path, small_data)  # the limit lifted: resume from the newest intact step
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_resumed_like_reference(tmp_path, reference["losses"], proc.stderr)


@pytest.mark.slow
def test_a_second_run_on_the_same_workdir_is_refused_and_a_killed_holder_taken_over(small_data, tmp_path, reference):
    first = subprocess.Popen(_command(tmp_path, small_data, "--config.train.num_steps=1000"), cwd=REPO,
                             env=FAST_INIT_ENV, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        for line in first.stderr:
            if "step 1/" in line:
                break
        second = _run(tmp_path, small_data)
        assert second.returncode == 2 and f"in use by PID {first.pid}" in second.stderr, second.stderr[-2000:]
        assert "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()
    third = _run(tmp_path, small_data)  # the holder was killed: its lock is stale
    assert third.returncode == 0 and "taking over the stale lock" in third.stderr, third.stderr[-3000:]


def _reachable_by_others(executable: str) -> bool:
    """Whether a user other than the owner can run `executable` (every parent directory searchable by others)."""
    path = Path(os.path.realpath(executable))
    return all(parent.stat().st_mode & 0o001 for parent in path.parents) and bool(path.stat().st_mode & 0o001)


@pytest.mark.slow
def test_a_workdir_that_cannot_be_created_is_one_line(small_data, tmp_path):
    """A workdir under a file cannot be created, even by root."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {**FAST_INIT_ENV, "HOME": str(tmp_path), "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(_command(blocker / "run", small_data), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "cannot create the work directory" in proc.stderr and "Traceback" not in proc.stderr


def _make_immutable(path: Path, on: bool) -> bool:
    """`chattr +i` (or `-i`): a directory even root cannot write into; False where chattr or the file system lacks it."""
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_read_only_workdir_is_one_line(small_data):
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="pikagen-ro-"))
    workdir = root / "ro"
    immutable = False
    try:
        root.chmod(0o755)
        workdir.mkdir(mode=0o555)
        workdir.chmod(0o555)
        preexec = None
        if os.geteuid() == 0:  # root ignores permission bits: make the folder immutable, or run as nobody
            immutable = _make_immutable(workdir, True)
            if not immutable:
                if not _reachable_by_others(sys.executable):
                    pytest.skip(f"running as root without chattr, and user nobody cannot run {sys.executable}")
                preexec = lambda: (os.setgid(65534), os.setuid(65534))  # noqa: E731
        env = {**FAST_INIT_ENV, "HOME": str(root), "JAX_COMPILATION_CACHE_DIR": str(root / "cache")}
        proc = subprocess.run(_command(workdir, small_data), cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=600, preexec_fn=preexec)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "not writable" in proc.stderr and "Traceback" not in proc.stderr
        assert not any(workdir.iterdir())
    finally:
        if immutable:
            _make_immutable(workdir, False)
        shutil.rmtree(root, ignore_errors=True)
