"""bench/bench_step_drift.py's MXCSR helper: flush-to-zero / denormals-are-zero really change float32 arithmetic."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import bench_step_drift  # noqa: E402

# 1e-38 is a normal float32 (tiny = 1.18e-38 is the smallest); half of it is subnormal: 5e-39 without FTZ, 0 with it
PROBE = """
import sys; sys.path.insert(0, {repo!r})
import numpy as np
from bench.bench_step_drift import set_flush_denormals, describe
print(describe(), float(np.float32(1e-38) * np.float32(0.5)))
print(set_flush_denormals(True), describe(), float(np.float32(1e-38) * np.float32(0.5)))
print(set_flush_denormals(False), describe(), float(np.float32(1e-38) * np.float32(0.5)))
"""


@pytest.mark.skipif(not bench_step_drift.supported(), reason="MXCSR is x86-64 Linux only")
def test_flush_denormals_changes_float32_results_and_can_be_undone():
    # its own process: the register is per thread and would leak into the other tests otherwise
    out = subprocess.run([sys.executable, "-c", PROBE.format(repo=str(REPO))], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    before, on, off = (line.split() for line in out[:3])
    assert before[0] == "off" and float(before[1]) == pytest.approx(5e-39, rel=1e-3)
    assert on[:3] == ["True", "ftz+daz", "on"] and float(on[3]) == 0.0
    assert off[:2] == ["True", "off"] and float(off[2]) == pytest.approx(5e-39, rel=1e-3)
