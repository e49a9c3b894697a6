"""Train one of the PikaPikaGen-JAX systems.

    python launch.py --config=configs/gan.py --workdir=runs/gan
    python launch.py --config=configs/gan.py:smoke --workdir=/tmp/smoke --config.train.batch_size=8

`config.system` ('gan', 'l1', 'diffusion', 'dcgan', 'alignment') picks
`pikagen_jax.<system>.train.train_and_evaluate`. The work directory holds checkpoints (training resumes from the
latest intact one automatically) and TensorBoard logs (`tensorboard --logdir <workdir>`). A mistake on the command
line or in the setup (unknown config key, bad value, missing dataset or weights) is one line and exit status 2;
`PIKAGEN_JAX_DEBUG=1` shows its traceback. Third-party INFO logging is off; `--verbosity=1` brings it back.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow (imported by CLU) logs errors only
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # and says nothing about oneDNN, which it does not use here

import jax  # noqa: E402
import ml_collections  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from pikagen_jax import config_utils  # noqa: E402
from pikagen_jax.errors import EXIT_USER_ERROR, debug_enabled, reporting_user_errors  # noqa: E402
from pikagen_jax.training import distributed  # noqa: E402
from pikagen_jax.training.compile_watch import enable_persistent_cache  # noqa: E402
from pikagen_jax.training.logging import quiet_third_party_logging  # noqa: E402
from pikagen_jax.training.loop import check_writable  # noqa: E402

_CONFIG = config_utils.define_config_flag("config")
flags.declare_key_flag("config")  # list --config in --help
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and TensorBoard logs.")
flags.mark_flags_as_required(["config", "workdir"])
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-process training: process 0's host:port "
                                   "(also PIKAGEN_COORDINATOR_ADDRESS; SLURM, Open MPI and TPU pods need none).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process training: how many processes in all.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process training: this process's id, 0..n-1.")
_TIMEOUT = flags.DEFINE_integer("distributed_timeout", 120, "Seconds to wait for all processes to join.")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing; a bad --config, preset or override is reported in one line (exit status 2)."""
    try:
        return flags.FLAGS(argv)
    except Exception as error:  # noqa: BLE001  (flag errors, and the config loader's own)
        if debug_enabled():
            raise
        print(f"error: {config_utils.explain_flag_error(error, argv)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_third_party_logging(verbose=flags.FLAGS.verbosity >= 1)
    with reporting_user_errors():  # before any JAX computation: the multi-process runtime, if asked for
        runtime = distributed.initialize(distributed.settings_from(_COORDINATOR.value, _NUM_PROCESSES.value,
                                                                   _PROCESS_ID.value, _TIMEOUT.value))
    logging.info("JAX %s; local devices: %s", runtime, jax.local_devices())
    cache = enable_persistent_cache()  # a resumed run loads its compiled step instead of compiling it again
    logging.info("JAX compilation cache: %s", cache or "off")
    config = _CONFIG.value
    if not isinstance(config, ml_collections.ConfigDict):  # a config file that failed to load: a stand-in
        if debug_enabled():
            config.to_dict()  # raises the loader's error with its traceback
        print(f"error: {config_utils.explain_flag_error(OSError('the config did not load'), sys.argv)}",
              file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    with reporting_user_errors():
        check_writable(Path(_WORKDIR.value))  # before any model or data is built
        config_utils.validate_common(config, jax.device_count())
        distributed.check_divisible(int(config.train.batch_size))
        train_and_evaluate = config_utils.trainer_for(config.system)
        train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
    jax.config.config_with_absl()  # JAX options as flags too, e.g. --jax_debug_nans
    app.run(main, flags_parser=parse_flags)  # absl flags parsed here also reach Grain's worker processes
