"""Hyperparameter sweeps: Ray Tune runs the trials, Optuna proposes them, ASHA stops weak ones."""
