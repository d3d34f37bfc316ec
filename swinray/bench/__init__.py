"""Benchmarks: ours against the baseline a user would write, on the same machine, in one run."""
