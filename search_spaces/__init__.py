"""Optuna define-by-run search spaces, one module per task."""
