"""Is the GAN step slower on a trained state than on a fresh one? Times one real batch on each, alternating.

    python bench/bench_step_drift.py --workdir=workdirs/quality60/cpu [--preset=cpu] [--steps=8]

Restores the latest checkpoint of `--workdir` (a `configs/gan.py` run) into one state and leaves a second
freshly initialised, then times the jitted train step on the same batch of real sprites for each, alternating
(fresh, trained, fresh, trained, ...) so machine noise hits both alike. Also counts the subnormal float32 values
(|x| < 1.18e-38, not 0) in the parameters and optimizer states, and in the step's outputs: x86 CPUs can take
a slow microcode path on such values unless flush-to-zero / denormals-are-zero is set
(`--flush_denormals=on` sets both). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# --- x86-64 Linux (glibc) MXCSR access: flush-to-zero / denormals-are-zero for this process's threads. Set
# before JAX creates its CPU client, the bits are inherited by every thread XLA starts (POSIX threads inherit
# the floating-point environment of the thread that creates them).
FTZ_BIT = 1 << 15  # MXCSR flush-to-zero: subnormal results become 0
DAZ_BIT = 1 << 6  # MXCSR denormals-are-zero: subnormal inputs are read as 0
_FENV_T_BYTES = 32  # glibc's x86-64 fenv_t: the x87 environment (28 bytes), then the 4-byte MXCSR
_MXCSR_OFFSET = 28


def supported() -> bool:
    """Whether this platform's MXCSR can be read and set here (x86-64 Linux with glibc)."""
    return sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64") \
        and ctypes.util.find_library("m") is not None


def _fenv() -> tuple[ctypes.CDLL, ctypes.Array, int] | None:
    """libm, the calling thread's floating-point environment and its MXCSR; None where unsupported."""
    if not supported():
        return None
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    env = ctypes.create_string_buffer(_FENV_T_BYTES)
    if libm.fegetenv(env):
        return None
    return libm, env, int.from_bytes(env.raw[_MXCSR_OFFSET:_MXCSR_OFFSET + 4], "little")


def read_mxcsr() -> int | None:
    """The calling thread's MXCSR register, or None where unsupported."""
    fenv = _fenv()
    return None if fenv is None else fenv[2]


def set_flush_denormals(enabled: bool = True) -> bool:
    """Sets (or clears) FTZ and DAZ for the calling thread and the threads it starts later.

    Returns True when the register now holds the requested bits, False where unsupported."""
    fenv = _fenv()
    if fenv is None:
        return False
    libm, env, mxcsr = fenv
    mxcsr = mxcsr | FTZ_BIT | DAZ_BIT if enabled else mxcsr & ~(FTZ_BIT | DAZ_BIT)
    env[_MXCSR_OFFSET:_MXCSR_OFFSET + 4] = mxcsr.to_bytes(4, "little")
    if libm.fesetenv(env):
        return False
    now = read_mxcsr()
    return now is not None and bool(now & FTZ_BIT) == enabled and bool(now & DAZ_BIT) == enabled


def describe() -> str:
    """'ftz+daz on', 'off', or why it cannot be read."""
    mxcsr = read_mxcsr()
    if mxcsr is None:
        return f"unsupported here ({sys.platform}, {platform.machine()})"
    bits = [name for name, bit in (("ftz", FTZ_BIT), ("daz", DAZ_BIT)) if mxcsr & bit]
    return "+".join(bits) + " on" if bits else "off"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a trained configs/gan.py run")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per state")
    parser.add_argument("--dataset", default="kaggle-splits_seed000_split")
    parser.add_argument("--flush_denormals", choices=("on", "off", "default"), default="default",
                        help="set FTZ/DAZ on (or off) before JAX starts; 'default' leaves the register as "
                             "the process got it")
    args = parser.parse_args()

    if args.flush_denormals != "default":
        set_flush_denormals(args.flush_denormals == "on")
    import jax
    import numpy as np
    from flax import nnx

    from pikagen_jax.config_utils import load_config
    from pikagen_jax.data.pipeline import make_train_loader
    from pikagen_jax.gan.state import GanState
    from pikagen_jax.gan.steps import make_train_step
    from pikagen_jax.training.checkpointing import Checkpointer
    from pikagen_jax.training.mesh import make_mesh, replicate_nodes, shard_batch

    config = load_config(f"configs/gan.py:{args.preset}", [f"data.dataset={args.dataset}"])
    mesh = make_mesh()
    batch = shard_batch(next(iter(make_train_loader(config))), mesh)

    def subnormals(tree) -> dict[str, int]:
        leaves = [np.asarray(x) for x in jax.tree.leaves(tree) if hasattr(x, "dtype") and x.dtype == np.float32]
        tiny = np.finfo(np.float32).tiny
        return {"values": int(sum(x.size for x in leaves)),
                "subnormal": int(sum(((x != 0) & (np.abs(x) < tiny)).sum() for x in leaves))}

    states, steps = {}, {}
    for name in ("fresh", "trained"):
        state = GanState(config, rngs=nnx.Rngs(0))
        replicate_nodes(mesh, state)
        if name == "trained":
            restored_step = Checkpointer.from_config(args.workdir, config).restore_latest_into(state.checkpoint_items())
            if not restored_step:
                raise SystemExit(f"no checkpoint in {args.workdir}/checkpoints")
        states[name], steps[name] = state, make_train_step(state, config, mesh)
    counts = {name: subnormals(nnx.state(state)) for name, state in states.items()}
    times: dict[str, list[float]] = {"fresh": [], "trained": []}
    for name in states:  # compile + warm-up (the same executable serves both: same shapes)
        jax.block_until_ready(steps[name](batch, 0))
    for i in range(args.steps):
        for name in states:
            start = time.perf_counter()
            out = jax.block_until_ready(steps[name](batch, i + 1))
            times[name].append(time.perf_counter() - start)
    result = {"workdir": args.workdir, "restored_step": restored_step, "flush_denormals": args.flush_denormals,
              "mxcsr": describe(),
              **{f"{name}_step_s_median": round(float(np.median(t)), 3) for name, t in times.items()},
              **{f"{name}_state_subnormal": c["subnormal"] for name, c in counts.items()},
              "state_values": counts["fresh"]["values"], "last_metrics_subnormal": subnormals(out)["subnormal"]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
