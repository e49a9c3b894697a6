"""Training on several processes (`jax.distributed`, CPU collectives over gloo), all on localhost: two processes
with one CPU device each train exactly as one process with two devices reading the same two data shards; a killed
process makes the other stop with an error, and both resume; bad settings are one line on every process. Every
case starts its processes itself on a free port, bounded in time, and kills them on the way out."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pikagen_jax.training import distributed
from tests.conftest import REPO
from tests.launch_helpers import FAST_INIT_ENV, kaggle_overrides
from tests.localhost import free_port

ONE_DEVICE = {**FAST_INIT_ENV, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
TWO_DEVICES = {**FAST_INIT_ENV, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}


def _start(args: list[str], env: dict, *, process_id: int | None = None, processes: int = 2, port: int = 0,
           timeout: int = 60) -> subprocess.Popen:
    cmd = [sys.executable, *args]
    if process_id is not None:
        cmd += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
                f"--process_id={process_id}", f"--distributed_timeout={timeout}"]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    """Waits for every process (killing all on timeout); returns (exit status, output) of each."""
    deadline = time.monotonic() + timeout
    out = []
    try:
        for proc in procs:
            text, _ = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
            out.append((proc.returncode, text))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out


STEP_SCRIPT = r"""
import sys
import numpy as np
import jax, jax.numpy as jnp
from pikagen_jax.training import distributed
from pikagen_jax.training.mesh import make_mesh, shard_batch, replicated
args = dict(a.split("=", 1) for a in sys.argv[1:])
if "port" in args:
    distributed.initialize(distributed.DistributedSettings(f"127.0.0.1:{args['port']}", 2, int(args["id"]), 60))
mesh = make_mesh()
rows = np.arange(8 * 3, dtype=np.float32).reshape(8, 3) / 10.0
local = rows if jax.process_count() == 1 else np.array_split(rows, 2)[jax.process_index()]
w = jax.device_put(jnp.ones((3,)), replicated(mesh))
step = jax.jit(lambda w, x: (w - 0.1 * jax.grad(lambda w: jnp.mean(jnp.tanh(x @ w) ** 2))(w)))
for _ in range(3):
    w = step(w, shard_batch({"x": local}, mesh)["x"])
print("RESULT", jax.process_count(), jax.device_count(), " ".join(f"{v:.9g}" for v in np.asarray(w.addressable_data(0))))
"""


def test_two_processes_run_the_jitted_data_parallel_step_as_one_process_with_two_devices(tmp_path):
    script = tmp_path / "step.py"
    script.write_text(STEP_SCRIPT)
    ((code, single),) = _finish([_start([str(script)], TWO_DEVICES)], 120)
    assert code == 0, single[-2000:]
    port = free_port()
    results = _finish([_start([str(script), f"port={port}", f"id={i}"], ONE_DEVICE) for i in (0, 1)], 180)
    values = []
    for code, text in results:
        assert code == 0, text[-3000:]
        line = next(line for line in text.splitlines() if line.startswith("RESULT"))
        assert line.split()[1:3] == ["2", "2"]  # two processes, two devices in the mesh
        values.append(np.array(line.split()[3:], np.float64))
    expected = np.array(next(row for row in single.splitlines() if row.startswith("RESULT")).split()[3:], np.float64)
    assert next(row for row in single.splitlines() if row.startswith("RESULT")).split()[1:3] == ["1", "2"]
    # the same gradients, summed in another order across processes (gloo) than across devices: 8 float32 terms
    np.testing.assert_allclose(values[0], values[1], rtol=0, atol=0)
    np.testing.assert_allclose(values[0], expected, rtol=0, atol=8 * np.finfo(np.float32).eps * 3)


def test_settings_are_checked_before_anything_starts():
    for settings, message in (
            (distributed.DistributedSettings("127.0.0.1:1", 2, None), "missing --process_id"),
            (distributed.DistributedSettings("localhost", 2, 0), "must be host:port"),
            (distributed.DistributedSettings("127.0.0.1:1", 2, 2), r"--process_id=2 must be in 0..1"),
            (distributed.DistributedSettings("127.0.0.1:1", 0, 0), "--num_processes=0 must be >= 1")):
        with pytest.raises(distributed.DistributedSetupError, match=message):
            distributed.check(settings)
    assert distributed.detected_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}) == "slurm"
    assert distributed.detected_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
    assert distributed.detected_cluster({"OMPI_COMM_WORLD_SIZE": "2"}) == "openmpi"
    assert distributed.detected_cluster({}) is None
    env = {"PIKAGEN_COORDINATOR_ADDRESS": "10.0.0.1:99", "PIKAGEN_NUM_PROCESSES": "4", "PIKAGEN_PROCESS_ID": "3"}
    assert distributed.settings_from(environ=env) == distributed.DistributedSettings("10.0.0.1:99", 4, 3)


def _launch(config: str, workdir: Path, small_data: dict, *overrides: str) -> list[str]:
    return ["launch.py", f"--config={config}", f"--workdir={workdir}",
            *(f"--config.{o}" for o in kaggle_overrides(small_data) + list(overrides))]


def _losses(workdir: Path, names: tuple[str, ...]) -> dict[str, dict[int, float]]:
    from pikagen_jax.plot_curves import read_scalars

    scalars = read_scalars(workdir)
    return {name: scalars[name] for name in names}


SMOKE_LOSSES = {"gan": ("d_loss", "g_loss"), "l1": ("loss",), "diffusion": ("loss",)}


@pytest.mark.slow
@pytest.mark.parametrize("system", ["gan", "l1", "diffusion"])
def test_two_processes_train_the_smoke_preset_like_one_process_with_two_devices(system, small_data, tmp_path):
    overrides = ["data.num_shards=2", "train.log_every=1", "train.batch_size=4"]
    if system == "diffusion":
        overrides = ["data.num_shards=2", "train.log_every=1", "stage=vae"]
    ((code, text),) = _finish([_start(_launch(f"configs/{system}.py:smoke", tmp_path / "one", small_data,
                                              *overrides), TWO_DEVICES)], 900)
    assert code == 0, text[-3000:]
    port = free_port()
    results = _finish([_start(_launch(f"configs/{system}.py:smoke", tmp_path / "two", small_data, *overrides),
                              ONE_DEVICE, process_id=i, port=port) for i in (0, 1)], 900)
    for code, text in results:
        assert code == 0, text[-3000:]
    folder = (lambda w: w / "vae") if system == "diffusion" else (lambda w: w)
    one, two = (_losses(folder(tmp_path / name), SMOKE_LOSSES[system]) for name in ("one", "two"))
    for name in SMOKE_LOSSES[system]:
        assert sorted(one[name]) == sorted(two[name]) and len(one[name]) >= 2
        for step in one[name]:
            np.testing.assert_allclose(two[name][step], one[name][step], rtol=1e-5, atol=1e-6, err_msg=f"{name} {step}")
    assert not list((tmp_path / "two").glob("events.out.tfevents.*.1")), "only process 0 writes TensorBoard"


@pytest.mark.slow
def test_a_killed_process_stops_the_other_with_an_error_and_both_resume(small_data, tmp_path):
    port = free_port()
    args = _launch("configs/gan.py:smoke", tmp_path, small_data, "train.num_steps=400", "checkpoint.every_steps=1",
                   "train.log_every=1")
    procs = [_start(args, ONE_DEVICE, process_id=i, port=port, timeout=60) for i in (0, 1)]
    try:
        seen = []
        for line in procs[0].stdout:
            seen.append(line)
            if "step 3/" in line:
                break
        else:
            pytest.fail("process 0 stopped before step 3:\n" + "".join(seen[-40:]))
        procs[1].send_signal(signal.SIGKILL)
        started = time.monotonic()
        code, text = _finish([procs[0]], 180)[0]
        assert code != 0 and time.monotonic() - started < 150, text[-2000:]
        # XLA's coordination service ends the survivor (an abort, not a Python exception) and says why
        assert "heartbeat timeout" in text or "another task died" in text, text[-3000:]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    port = free_port()
    resumed = _finish([_start(_launch("configs/gan.py:smoke", tmp_path, small_data, "train.num_steps=6",
                                      "checkpoint.every_steps=1"), ONE_DEVICE, process_id=i, port=port)
                       for i in (0, 1)], 900)
    for code, text in resumed:
        assert code == 0, text[-3000:]
    assert "resumed from" in resumed[0][1] and "step 6/6" in resumed[0][1]


@pytest.mark.slow
def test_bad_distributed_settings_are_one_line_on_every_process(small_data, tmp_path):
    args = _launch("configs/gan.py:smoke", tmp_path, small_data)
    unreachable = _finish([_start(args, ONE_DEVICE, process_id=1, port=free_port(), timeout=10)], 120)
    port = free_port()
    odd_batch = _finish([_start(_launch("configs/gan.py:smoke", tmp_path, small_data, "train.batch_size=3"),
                                ONE_DEVICE, process_id=i, port=port) for i in (0, 1)], 300)
    for (code, text), message in ((unreachable[0], "could not join the multi-process run"),
                                  (odd_batch[0], "train.batch_size=3 is not divisible by the 2"),
                                  (odd_batch[1], "train.batch_size=3 is not divisible by the 2")):
        assert code == 2 and message in text and "Traceback" not in text, text[-2000:]
