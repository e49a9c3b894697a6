"""XLA:CPU flags this project sets by default (before JAX creates its CPU client), and how to opt out.

Measured on the 2-core CI machine (jaxlib 0.10.2, BENCHMARKS.md "Convolutions out of YNNPACK"): YNNPACK's convolutions
compute 3×3 stride-1 kernel gradients at 26–50 GFLOP/s where XLA's Eigen convolutions reach 86–179, and
their forward / input-gradient convolutions are slower too. Taking convolutions out of YNNPACK (its dots
and other fusions stay) makes the seed-002 GAN step at 64 px batch 16 1.27× faster; the L1 model has no
convolutions and is unaffected.

The flag is only set for the jaxlib it was measured with (an unknown flag aborts XLA), when the user's
XLA_FLAGS do not already choose YNNPACK fusions, and unless PIKAGEN_JAX_XLA_DEFAULTS=0.
"""

from __future__ import annotations

import os

MEASURED_JAXLIB = "0.10."
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
DEFAULT_FLAGS = (f"{YNN_FLAG}=-individual_convolution",)
OPT_OUT = "PIKAGEN_JAX_XLA_DEFAULTS"


def default_flags(current: str, jaxlib_version: str, opt_out: str | None = None) -> str:
    """`current` XLA_FLAGS plus this project's defaults (unchanged when opted out, for another jaxlib, or
    when `current` already sets the YNNPACK fusion types)."""
    if opt_out in ("0", "false", "False", "no") or not jaxlib_version.startswith(MEASURED_JAXLIB):
        return current
    if YNN_FLAG in current:
        return current
    return " ".join([current.strip(), *DEFAULT_FLAGS]).strip()


def apply() -> None:
    """Adds the defaults to os.environ['XLA_FLAGS']; effective when JAX has not yet created its CPU client."""
    try:
        from importlib.metadata import version
        jaxlib_version = version("jaxlib")
    except Exception:  # not installed as a distribution: leave the flags alone
        return
    os.environ["XLA_FLAGS"] = default_flags(os.environ.get("XLA_FLAGS", ""), jaxlib_version,
                                            os.environ.get(OPT_OUT))
    if not os.environ["XLA_FLAGS"]:
        del os.environ["XLA_FLAGS"]
