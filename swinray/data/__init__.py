"""Datasets: task registry, dataset manifests, the CT phantom, transforms and the Ray Data cache."""
