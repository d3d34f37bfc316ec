"""Self-supervised proxy tasks: view generation and losses (Tang et al., CVPR 2022)."""
