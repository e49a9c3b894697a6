"""PikaPikaGen-JAX: text to Pokémon sprite generation in JAX/Flax NNX."""

import os as _os

from pikagen_jax import xla_defaults as _xla_defaults

_xla_defaults.apply()  # XLA:CPU flags measured faster here (pikagen_jax/xla_defaults.py); before JAX's CPU client
# TensorFlow is only imported for TensorBoard files and dataset metadata: keep its start-up lines off the console
# (its oneDNN options only affect TensorFlow's own ops, which compute nothing here).
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
