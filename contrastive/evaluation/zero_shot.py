"""Zero-shot classification: images against class prompts embedded by the text tower.

A classifier is built from class names and prompt templates (:func:`zero_shot_weights`), images
are scored by cosine (:func:`zero_shot_logits`), and accuracy is :func:`zero_shot_accuracy`, or,
accumulated over an evaluation run and synced across ranks, torchmetrics' ``MulticlassAccuracy``
over those logits (:func:`zero_shot_metric`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

__all__ = ["zero_shot_accuracy", "zero_shot_logits", "zero_shot_metric", "zero_shot_weights"]

#: The template of CLIP's paper when none is given.
DEFAULT_PROMPTS = ("a photo of a {}.",)


def zero_shot_weights(
    encode_text: Callable[[list[str]], Tensor],
    class_names: Sequence[str],
    templates: Sequence[str],
) -> Tensor:
    """A zero-shot classifier from class names and prompt templates (Radford et al. 2021, 3.1.4).

    Each class's prompts (``template.format(name)``) are embedded, normalised, averaged over the
    templates and normalised again.

    Args:
        encode_text: ``list[str] -> (len, D)`` text embeddings.
        class_names: the ``C`` class names, in label order.
        templates: prompts with one ``{}`` for the class name, e.g. ``"a photo of a {}."``.

    Returns:
        ``(C, D)`` unit-norm class embeddings, float32.
    """
    if not class_names or not templates:
        raise ValueError(
            f"expected class names and templates, got {len(class_names)} and {len(templates)}"
        )
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"prompt templates need a '{{}}' for the class name, got {bad}")
    prompts = [template.format(name) for name in class_names for template in templates]
    emb = F.normalize(encode_text(prompts).float(), dim=1)  # (C * T, D)
    emb = emb.view(len(class_names), len(templates), -1).mean(dim=1)  # (C, D)
    return F.normalize(emb, dim=1)


def zero_shot_logits(images: Tensor, weights: Tensor) -> Tensor:
    """Cosine similarity of ``(N, D)`` images to ``(C, D)`` class embeddings: ``(N, C)``."""
    return F.normalize(images.float(), dim=1) @ weights.float().T


def zero_shot_accuracy(images: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    """Top-1 accuracy of ``(N, D)`` images with ``(N,)`` labels against ``(C, D)`` weights."""
    return (zero_shot_logits(images, weights).argmax(dim=1) == labels).float().mean()


def zero_shot_metric(num_classes: int) -> MulticlassAccuracy:
    """The accumulating form of :func:`zero_shot_accuracy`: ``update(logits, labels)``."""
    return MulticlassAccuracy(num_classes, average="micro")
