"""The baseline of every test report: the same method at a seeded random init.

What the pixels and the architecture give for free, against which the trained encoder's figures
are read. Only what the method trains is re-drawn; a frozen part (LiT's locked text tower,
Conditional's frozen towers, BYOL's EMA target) is kept as it is, since training did not make it.
"""

from __future__ import annotations

import copy

import torch
from lightning.pytorch import LightningModule
from torch import nn

from contrastive.backbones import create_backbone

__all__ = ["random_init"]

_INITIALISERS = ("init_parameters", "reset_parameters", "_reset_parameters")


def random_init(model: LightningModule, seed: int = 0) -> LightningModule:
    """A copy of ``model`` (in eval mode, on its device) with its trained parts re-initialised.

    The backbone, when it trains, is built again from the registry with the same arguments but
    no weights (``checkpoint`` and ``pretrained`` dropped), so it gets its architecture's own
    initialisation; every other layer with trainable parameters calls its own initialiser
    (``reset_parameters`` and the like). The draw is seeded, so every rank and run gets the same
    baseline. The copy holds no trainer and is not part of ``model``.
    """
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    # Shared, not copied: factories such as the optimizer jsonargparse builds from a config hold
    # the CLI, and so the trainer's live loader workers, which cannot be copied; the baseline
    # never trains.
    shared = {
        id(v): v for v in vars(model).values() if callable(v) and not isinstance(v, nn.Module)
    }
    baseline = copy.deepcopy(model, shared).eval()
    copies = dict(zip(model.parameters(), baseline.parameters(), strict=True))
    trained = {id(copies[p]) for p in model.parameters() if id(p) in trainable}
    backbone = getattr(baseline, "backbone", None)
    hparams = getattr(model, "hparams", {})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        skip: set[int] = set()
        if isinstance(backbone, nn.Module) and "backbone" in hparams:
            skip = {id(m) for m in backbone.modules()}
            if any(id(p) in trained for p in backbone.parameters()):
                kwargs = dict(hparams.get("backbone_kwargs") or {})
                kwargs.pop("checkpoint", None)
                kwargs.pop("pretrained", None)
                fresh = create_backbone(hparams["backbone"], **kwargs)
                backbone.load_state_dict(fresh.state_dict())
        for layer in baseline.modules():
            own = list(layer.parameters(recurse=False))
            if id(layer) in skip or not any(id(p) in trained for p in own):
                continue
            for name in _INITIALISERS:
                if callable(getattr(layer, name, None)):
                    getattr(layer, name)()
                    break
    return baseline.to(model.device)
