"""GeneCIS's score (Vaze et al., CVPR 2023, arXiv:2306.07969): where the target lands among its
own gallery for (reference, condition), as Recall@1, @2 and @3 per task.

Each record ranks its gallery (the target first, then the distractors; padding masked out) by
four scorers, GeneCIS's baselines beside the conditioned model:

- ``conditioned``: the conditioned embeddings of the reference and of each gallery image, both
  under the record's condition (a text-conditioned model, ``Conditional``);
- ``image``: the unconditioned image embeddings alone;
- ``text``: the condition's text embedding against the gallery's image embeddings;
- ``image+text``: the sum of the unit reference and text embeddings (GeneCIS's "Image + Text").

The ranking is :func:`~contrastive.evaluation.retrieval.rank_relevant` (ties against the model).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from contrastive.evaluation.common import append, cat_or_none, dataset_order
from contrastive.evaluation.conditional_benchmark import SCORERS, ConditionalModel
from contrastive.evaluation.retrieval import rank_relevant

KS = (1, 2, 3)  # GeneCIS reports Recall@1, @2 and @3

Results = dict[tuple[str, str], dict[str, float]]  # (task, scorer) -> {"R@1": ...}


@runtime_checkable
class TextImageModel(Protocol):
    """What the image, text and image+text scorers need (CLIP, LiT, ``Conditional``)."""

    def encode_image(self, images: Tensor) -> Tensor:
        """uint8 ``(B, C, H, W)`` -> ``(B, E)`` image embeddings."""

    def encode_text(self, texts: list[str]) -> Tensor:
        """Texts -> ``(N, E)`` embeddings in the image embedding's space."""


def scorers_of(model: TextImageModel) -> tuple[str, ...]:
    """The scorers a model can run: all four for a text-conditioned model, else the baselines."""
    return SCORERS if isinstance(model, ConditionalModel) else SCORERS[1:]


def gallery_scores(
    model: TextImageModel, images: Tensor, texts: list[str], gallery: Tensor, mask: Tensor
) -> dict[str, Tensor]:
    """Each scorer's ``(B, G)`` similarity of every record's reference to its gallery.

    Args:
        model: the towers (and the conditioning, for ``conditioned``).
        images: ``(B, C, H, W)`` uint8 references.
        texts: the ``B`` conditions.
        gallery: ``(B, G, C, H, W)`` uint8, the target first.
        mask: ``(B, G)`` bool, which gallery entries are images (``-inf`` where not).
    """
    b, g = mask.shape
    flat = gallery.flatten(0, 1)  # (B * G, C, H, W)
    reference = F.normalize(model.encode_image(images).float(), dim=-1)  # (B, E)
    candidates = F.normalize(model.encode_image(flat).float(), dim=-1).unflatten(0, (b, g))
    text = F.normalize(model.encode_text(list(texts)).float(), dim=-1)  # (B, E)
    queries = {
        "image": reference,
        "text": text,
        "image+text": F.normalize(reference + text, dim=-1),
    }
    scores = {s: torch.einsum("be,bge->bg", q, candidates) for s, q in queries.items()}
    if isinstance(model, ConditionalModel):
        query = model.condition_from(model.condition_inputs(images), text).float()  # (B, D)
        keys = model.condition_from(
            model.condition_inputs(flat), text.repeat_interleave(g, dim=0)
        ).float()  # (B * G, D), each under its own record's condition
        keys = F.normalize(keys, dim=-1).unflatten(0, (b, g))
        scores["conditioned"] = torch.einsum("bd,bgd->bg", F.normalize(query, dim=-1), keys)
    return {s: scores[s].masked_fill(~mask, float("-inf")) for s in scorers_of(model)}


def target_ranks(scores: Tensor) -> Tensor:
    """``(B,)`` 0-based rank of each record's target (column 0) among ``(B, G)`` scores."""
    relevant = torch.zeros_like(scores, dtype=torch.bool)
    relevant[:, 0] = True
    return rank_relevant(scores, relevant).first


def genecis_recall(
    ranks: Tensor, tasks: Tensor, task_names: Sequence[str], scorers: Sequence[str]
) -> Results:
    """Recall@1, @2, @3 per task and scorer of ``(N, S)`` target ranks with ``(N,)`` tasks
    (positions in ``task_names``); a task without records is left out."""
    results = {}
    for t, task in enumerate(task_names):
        rows = ranks[tasks == t]  # (n, S)
        if len(rows) == 0:
            continue
        for s, scorer in enumerate(scorers):
            results[(task, scorer)] = {f"R@{k}": (rows[:, s] < k).float().mean().item() for k in KS}
    return results


def average_recall(results: Results, scorers: Sequence[str]) -> dict[str, float]:
    """``{scorer: R@1 averaged over the tasks scored}`` (GeneCIS's "Average" column)."""
    out = {}
    for scorer in scorers:
        values = [m["R@1"] for (_, s), m in results.items() if s == scorer]
        if values:
            out[scorer] = sum(values) / len(values)
    return out


class GeneCISRecall(Metric):
    """:func:`genecis_recall` over a test run: each record's target ranks, task and dataset id
    ("cat" states: ``S + 2`` integers a record, GeneCIS's largest task has about 2,000).

    With dataset ids the gathered records are put back in dataset order and a
    ``DistributedSampler``'s padding dropped, so two processes give one process's result and
    count each record once.

    Args:
        task_names: the tasks, in the order of the ``tasks`` positions given to ``update``.
        scorers: the scorers, in the order of the rank columns.
    """

    full_state_update = False

    def __init__(self, task_names: Sequence[str], scorers: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.task_names, self.scorers = tuple(task_names), tuple(scorers)
        for name in ("ranks", "tasks", "ids"):
            self.add_state(name, [], dist_reduce_fx="cat")

    def update(self, ranks: dict[str, Tensor], tasks: Tensor, ids: Tensor) -> None:
        """Add each scorer's ``(B,)`` target ranks, the records' ``(B,)`` tasks and ids."""
        append(self, "ranks", torch.stack([ranks[s] for s in self.scorers], 1).long())
        append(self, "tasks", tasks.long().to(self.device))
        append(self, "ids", ids.long().to(self.device))

    def compute(self) -> tuple[Results, dict[str, int]]:
        """``{(task, scorer): {"R@1", "R@2", "R@3"}}`` and ``{task: records scored}``."""
        ranks = cat_or_none(self.ranks)
        if ranks is None:
            return {}, dict.fromkeys(self.task_names, 0)
        keep = dataset_order(dim_zero_cat(self.ids))
        ranks, tasks = ranks[keep], dim_zero_cat(self.tasks)[keep]
        scored = {task: int((tasks == t).sum()) for t, task in enumerate(self.task_names)}
        return genecis_recall(ranks, tasks, self.task_names, self.scorers), scored


__all__ = [
    "KS",
    "GeneCISRecall",
    "TextImageModel",
    "average_recall",
    "gallery_scores",
    "genecis_recall",
    "scorers_of",
    "target_ranks",
]
