"""PikaPikaGen-JAX: text to Pokémon sprite generation in JAX/Flax NNX."""
