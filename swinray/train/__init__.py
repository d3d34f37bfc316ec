"""Training: the per-worker loops and the drivers that build Ray Train trainers."""
