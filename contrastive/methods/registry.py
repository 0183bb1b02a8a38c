"""The methods the package exports, listed: the image methods by their module's name
(``simclr``, ``moco_v3``, ``dino``, ...), the defaults of a method's arguments, and the small
sizes a smoke run (the tests, ``benchmarks/gpu/speed.py --quick``) takes them down to."""

from __future__ import annotations

import inspect
from typing import Any

from contrastive.cli_errors import init_parameters
from contrastive.methods.base import ContrastiveMethod


def method_defaults(cls: type) -> dict[str, Any]:
    """Every argument of ``cls`` that has a default, with the default its caller gets."""
    defaults: dict[str, Any] = {}
    for p in init_parameters(cls):
        if p.default is not p.empty:
            defaults.setdefault(p.name, p.default)
    return defaults


# A smoke run's sizes: an argument a method has is taken down to this if its default is larger.
SMOKE_SIZES = dict(
    projector_hidden_dim=16,
    projector_dim=8,
    predictor_hidden_dim=16,
    num_prototypes=16,
    queue_size=16,
    queue_start_epoch=0,
    freeze_prototypes_steps=0,
    freeze_last_layer_epochs=0,
)


def smoke_kwargs(cls: type) -> dict[str, Any]:
    """``cls``'s arguments of :data:`SMOKE_SIZES`, each at the smaller of that and its default."""
    defaults = method_defaults(cls)
    return {k: min(v, defaults[k]) for k, v in SMOKE_SIZES.items() if k in defaults}


def _trains_on_images(cls: type) -> bool:
    """A method with a loss whose every argument has a default (CLIP and Conditional need a
    text tower; the bases have no loss)."""
    has_loss = (
        cls.training_loss is not ContrastiveMethod.training_loss
        or cls.training_embeddings is not ContrastiveMethod.training_embeddings
    )
    parameters = inspect.signature(cls).parameters.values()
    return has_loss and all(p.default is not p.empty or p.kind is p.VAR_KEYWORD for p in parameters)


def image_methods() -> dict[str, type[ContrastiveMethod]]:
    """Every image method ``contrastive.methods`` exports, by its module's name:
    ``{"simclr": SimCLR, "byol": BYOL, ...}``; a new method file exported there is listed."""
    from contrastive import methods

    exported = (getattr(methods, name) for name in methods.__all__)
    return {
        cls.__module__.rpartition(".")[2]: cls
        for cls in exported
        if isinstance(cls, type) and issubclass(cls, ContrastiveMethod) and _trains_on_images(cls)
    }
