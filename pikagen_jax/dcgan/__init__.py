"""The unconditional DCGAN of seed 004 (BCE loss, or WGAN-GP): state, train step, sampling, training entry point."""
