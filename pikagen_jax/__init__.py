"""PikaPikaGen-JAX: text to Pokémon sprite generation in JAX/Flax NNX."""

from pikagen_jax import xla_defaults as _xla_defaults

_xla_defaults.apply()  # XLA:CPU flags measured faster here (pikagen_jax/xla_defaults.py); before JAX's CPU client
