"""Contrastive and self-supervised representation learning on PyTorch Lightning."""

__version__ = "0.1.0"
__all__ = ["load_encoder"]


def __getattr__(name: str):
    # Imported when first used, so `import contrastive` stays light and cycle-free.
    if name == "load_encoder":
        from contrastive.encoder import load_encoder

        return load_encoder
    raise AttributeError(f"module 'contrastive' has no attribute '{name}'")
