"""Contrastive and self-supervised representation learning on PyTorch Lightning.

The commands as functions (:mod:`contrastive.api`): ``fit``, ``load``, ``embed``, ``similar``,
``probe``; and ``load_encoder`` for an exported encoder (:mod:`contrastive.encoder`).
"""

__version__ = "0.1.0"
__all__ = ["Run", "embed", "fit", "load", "load_encoder", "probe", "similar"]

# Where each name lives; imported when first used, so `import contrastive` stays light and
# cycle-free.
_HOMES = {
    "Run": "contrastive.api",
    "fit": "contrastive.api",
    "load": "contrastive.api",
    "embed": "contrastive.api",
    "similar": "contrastive.api",
    "probe": "contrastive.api",
    "load_encoder": "contrastive.encoder",
}


def __getattr__(name: str):
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'contrastive' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
