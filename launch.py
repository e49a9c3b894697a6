"""Train one of the PikaPikaGen-JAX systems.

    python launch.py --config=configs/gan.py --workdir=runs/gan
    python launch.py --config=configs/gan.py:smoke --workdir=/tmp/smoke --config.train.batch_size=8

`config.system` ('gan', 'l1', 'diffusion', 'dcgan') picks `pikagen_jax.<system>.train.train_and_evaluate`.
The work directory holds checkpoints (training resumes from the latest automatically) and TensorBoard logs
(`tensorboard --logdir <workdir>`).
"""

import jax
from absl import app, flags, logging

from pikagen_jax import config_utils
from pikagen_jax.training.compile_watch import enable_persistent_cache

_CONFIG = config_utils.define_config_flag("config")
flags.declare_key_flag("config")  # list --config in --help
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and TensorBoard logs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.info("JAX process %d/%d, local devices: %s", jax.process_index(), jax.process_count(),
                 jax.local_devices())
    cache = enable_persistent_cache()  # a resumed run loads its compiled step instead of compiling it again
    logging.info("JAX compilation cache: %s", cache or "off")
    config = _CONFIG.value
    config_utils.validate_common(config, jax.device_count())
    train_and_evaluate = config_utils.trainer_for(config.system)
    train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
    jax.config.config_with_absl()  # JAX options as flags too, e.g. --jax_debug_nans
    app.run(main)  # absl flags parsed here also reach Grain's worker processes
