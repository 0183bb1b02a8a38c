"""The methods the package exports, listed: the image methods by their module's name
(``simclr``, ``moco_v3``, ``dino``, ...), and the defaults of a method's arguments."""

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
