"""Steps/s of one training run as one process (1 or 2 CPU devices) and as two `jax.distributed` processes on
localhost (1 CPU device each), side by side on the same config, data and batch.

    python bench/bench_multiprocess.py --config=configs/gan.py:cpu --steps=60 --benchmarks_md=BENCHMARKS.md

Each run trains `--steps` steps from scratch into a temporary folder; the speed is the console's steps/s over the
last `--window` steps (compilation excluded). Two processes on one 2-core machine share its cores, so this
measures the overhead of the collectives, not the scaling on a cluster (docs/multi-machine.md).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import append_markdown, command_line  # noqa: E402

SPEED = re.compile(r"step (\d+)/\d+ .*\| ([\d.]+) steps/s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(config: str, overrides: list[str], workdir: Path, devices: int, processes: int, timeout: float) -> float:
    """Trains once; returns the steps/s the console reports for the last logged window."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    cmd = [sys.executable, "launch.py", f"--config={config}", f"--workdir={workdir}",
           *(f"--config.{o}" for o in overrides)]
    port = free_port()
    procs = [subprocess.Popen(cmd + ([f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
                                      f"--process_id={i}"] if processes > 1 else []),
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(processes)]
    try:
        outputs = [proc.communicate(timeout=timeout)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, text in zip(procs, outputs):
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{text[-3000:]}")
    speeds = SPEED.findall(outputs[0])
    if not speeds:
        raise RuntimeError("no steps/s line in the console:\n" + outputs[0][-3000:])
    return float(speeds[-1][1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/gan.py:cpu")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--window", type=int, default=20, help="steps per console line (the speed of the last one)")
    p.add_argument("--dataset", default="kaggle-splits_seed000_split")
    p.add_argument("--data_dir", default="data/tfds")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--benchmarks_md", help="append the table and the command to this Markdown file")
    args = p.parse_args(argv)
    overrides = [f"data.dataset={args.dataset}", f"data.data_dir={args.data_dir}", f"train.num_steps={args.steps}",
                 f"train.log_every={args.window}", "eval.every_steps=0"]
    modes = (("1 process, 1 CPU device", 1, 1), ("1 process, 2 CPU devices", 2, 1),
             ("2 processes, 1 CPU device each", 1, 2))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, devices, processes) in enumerate(modes):
            speed = run(args.config, overrides, Path(tmp) / f"run{i}", devices, processes, args.timeout)
            rows.append((label, speed))
            print(f"{label}: {speed:.3f} steps/s", flush=True)
    base = rows[0][1]
    table = "| layout | steps/s | vs 1 process, 1 device |\n|---|---|---|\n" + "".join(
        f"| {label} | {speed:.3f} | {speed / base:.2f}x |\n" for label, speed in rows)
    print(table)
    if args.benchmarks_md:
        append_markdown(args.benchmarks_md, f"Multi-process ({time.strftime('%Y-%m-%d')}, `{args.config}`, batch per "
                        f"the config, steps/s over the last {args.window} of {args.steps} steps)",
                        command_line(__file__, argv), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
