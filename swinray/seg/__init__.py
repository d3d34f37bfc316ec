"""Segmentation: metrics, sliding-window inference, model files, overlays, evaluate and predict."""
