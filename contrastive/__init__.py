"""Contrastive and self-supervised representation learning on PyTorch Lightning."""

__version__ = "0.1.0"
