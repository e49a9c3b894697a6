"""Seed 000/001 encoder–attention–decoder system: state, steps, training, figures and grid search."""
