"""Image-text evaluation: zero-shot classification and retrieval, for methods with two towers.

At every validation and test, on the query split: zero-shot accuracy per label field from the
data's class names and the prompt templates (``val/zero_shot/<field>``), and image-to-text and
text-to-image recall@1/5/10 and median rank of the captions (``val/retrieval/i2t/R@1``, ...).
At test the same method at a seeded random init is measured too (``test/random/...``) and one
table is printed, titled by what was measured.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn

from contrastive.datamodules.common import DataError
from contrastive.evaluation.callback import EvaluationCallback, batch_ids, log_results, note
from contrastive.evaluation.random_init import random_init
from contrastive.evaluation.render import crossmodal_table
from contrastive.evaluation.retrieval import CrossModalRetrieval, text_ids
from contrastive.evaluation.zero_shot import (
    DEFAULT_PROMPTS,
    zero_shot_logits,
    zero_shot_metric,
    zero_shot_weights,
)


@runtime_checkable
class ImageTextModel(Protocol):
    """What image-text evaluation needs from a method (``CLIP`` and ``Conditional`` have it)."""

    def encode_image(self, images: Tensor) -> Tensor:
        """uint8 ``(B, C, H, W)`` -> ``(B, E)`` in the shared space."""

    def encode_text(self, texts: list[str]) -> Tensor:
        """Texts -> ``(N, E)`` in the shared space."""


class CrossModalEvaluation(EvaluationCallback):
    """Zero-shot accuracy and image-text retrieval of ``encode_image`` and ``encode_text``.

    Args:
        prompts: templates per label field, e.g. ``{"shape": ["a {}", "a small {}"]}``, each
            with a ``{}`` for the class name; only the fields named are classified. ``None``:
            every field with class names, with ``"a photo of a {}."``. A field the data has no
            class names for is skipped with a note.
        retrieval_chunk_size: queries per chunk when ranking (memory ``chunk x N``).
        max_samples: image-caption pairs ranked per process (retrieval depends on how many).
        random_init: at test, measure the same method at a seeded random init too.
        seed: seed of the random init.
    """

    def __init__(
        self,
        prompts: dict[str, list[str]] | None = None,
        retrieval_chunk_size: int = 1024,
        max_samples: int = 16384,
        random_init: bool = True,
        seed: int = 0,
    ) -> None:
        self.prompts, self.random_init, self.seed = prompts, random_init, seed
        self.retrieval_args = dict(chunk_size=retrieval_chunk_size, max_samples=max_samples)
        self.metrics = nn.ModuleDict()
        self._models: dict[str, LightningModule] = {}
        self._weights: dict[str, dict[str, Tensor]] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "predict":
            return
        if not isinstance(pl_module, ImageTextModel):
            raise DataError(
                f"CrossModalEvaluation needs a method with encode_image and encode_text (CLIP); "
                f"{type(pl_module).__name__} has none: drop it from trainer.callbacks"
            )
        names = self.data.class_names
        prompts = self.prompts or {field: list(DEFAULT_PROMPTS) for field in names}
        unknown = sorted(set(prompts) - set(names))
        if unknown:
            note(
                f"zero-shot: the data has no class names for {unknown} (it has "
                f"{sorted(names) or 'none'}); those prompts are skipped"
            )
        self.zero_shot = {f: (tuple(names[f]), t) for f, t in prompts.items() if f in names}

    def start(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._models = {"trained": pl_module}
        if stage == "test" and self.random_init:
            self._models["random"] = random_init(pl_module, self.seed)
        metrics = {}
        for run in self._models:
            metrics[f"{run}/retrieval"] = CrossModalRetrieval(**self.retrieval_args)
            for field, (classes, _) in self.zero_shot.items():
                metrics[f"{run}/zero_shot/{field}"] = zero_shot_metric(len(classes))
        self.metrics = nn.ModuleDict(metrics).to(pl_module.device)
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            self._weights = {
                run: {
                    field: zero_shot_weights(model.encode_text, classes, templates)
                    for field, (classes, templates) in self.zero_shot.items()
                }
                for run, model in self._models.items()
            }

    def query_batch(self, trainer, pl_module, batch, embedding, stage) -> None:
        captions = batch.get("caption")
        labels = batch.get("labels", {})
        for run, model in self._models.items():
            with trainer.precision_plugin.forward_context():
                images = model.encode_image(batch["image"])  # (B, E)
                texts = None if captions is None else model.encode_text(list(captions))
            if texts is not None:
                groups = text_ids(captions).to(images.device)
                self.metrics[f"{run}/retrieval"].update(images, texts, groups, batch_ids(batch))
            for field, weights in self._weights[run].items():
                if field in labels:
                    logits = zero_shot_logits(images, weights)  # (B, C)
                    self.metrics[f"{run}/zero_shot/{field}"].update(logits, labels[field])

    def finish(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not self._models:
            return
        results: dict[str, dict[str, float]] = {}
        for run in self._models:
            values = {}
            retrieval = self.metrics[f"{run}/retrieval"]
            if retrieval.update_count > 0:
                dropped = int(retrieval.dropped.sum())  # local: before compute's sync
                for name, value in retrieval.compute().items():
                    values[f"retrieval/{name}"] = value.item()
                if dropped:
                    note(f"{stage} retrieval ranked the first pairs only, {dropped} left out")
            for field in self.zero_shot:
                metric = self.metrics[f"{run}/zero_shot/{field}"]
                if metric.update_count > 0:
                    values[f"zero_shot/{field}"] = metric.compute().item()
            results[run] = values
            prefix = stage if run == "trained" else f"{stage}/{run}"  # test/random/...
            log_results(pl_module, {f"{prefix}/{k}": v for k, v in values.items()})
        if stage == "test" and results.get("trained") and trainer.is_global_zero:
            classes = {field: len(names) for field, (names, _) in self.zero_shot.items()}
            print(crossmodal_table(results["trained"], results.get("random", {}), classes))
        self._models, self._weights, self.metrics = {}, {}, nn.ModuleDict()
