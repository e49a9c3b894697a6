"""The DF-GAN-style conditional GAN of seed 002: state, train step, training entry point."""
