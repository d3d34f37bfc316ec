"""Self-supervised proxy tasks of Tang et al. (CVPR 2022), as tensor code with explicit generators.

``views``: two augmented views, rotation classes and inner cutout (``make_ssl_batch``);
``losses``: rotation cross-entropy, NT-Xent across ranks, L1 reconstruction (``ssl_loss``).
"""
