"""The sprite-caption alignment encoder (DAMSM-style): trained contrastively on the train split, it scores
whether generated sprites follow their text (R-precision; `pikagen_jax.metrics.alignment`)."""
