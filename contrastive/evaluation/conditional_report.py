"""The conditional benchmark at every validation and test, for text-conditioned methods.

On a labelled query split with conditions and phrasings (``ShapesTripletDataModule``): for each
condition and phrasing, rank the split's other images for a query image under the condition, for
the conditioned model and the image, text and image+text baselines
(:mod:`contrastive.evaluation.conditional_benchmark`) with its controls (the wrong condition's
text, and a linear probe per condition fit on the bank loader's images), logged as
``val/conditional/<condition>/<phrasing>/<scorer>/<metric>``. On triplet batches (a manifest's
anchor, positive, hard negative and condition), triplet accuracy per condition and scorer. At
test, one table.
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn

from contrastive import distributed
from contrastive.datamodules.common import DataError
from contrastive.evaluation.callback import (
    EvaluationCallback,
    batch_ids,
    log_results,
    note,
    stacked_labels,
)
from contrastive.evaluation.conditional_benchmark import (
    BenchmarkFunctions,
    ConditionalBenchmark,
    ConditionalModel,
    ConditionSpec,
    TripletAccuracy,
    triplet_correct,
)
from contrastive.evaluation.render import conditional_table


class ConditionalEvaluation(EvaluationCallback):
    """The conditional benchmark and triplet accuracy of a method with ``condition_inputs``,
    ``condition_from``, ``encode_image`` and ``encode_text`` (``Conditional``).

    Args:
        eval_queries: queries of the benchmark (the first images of the query split, in
            dataset order), each ranked against the whole split.
        max_gallery: images of the query split kept per process (the gallery).
        seed: the draw of the benchmark's triplets.
        probe: the ``probe`` control, linear probes fit on the bank loader's images (the
            ``wrong condition`` control is always run).
    """

    def __init__(
        self, eval_queries: int = 512, max_gallery: int = 8192, seed: int = 0, probe: bool = True
    ) -> None:
        if eval_queries < 1:
            raise ValueError(f"eval_queries must be >= 1, got {eval_queries}")
        self.eval_queries, self.max_gallery, self.seed = eval_queries, max_gallery, seed
        self.probe = probe
        self.metrics = nn.ModuleDict()
        self._seen = self._bank_seen = 0

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "predict" and not isinstance(pl_module, ConditionalModel):
            raise DataError(
                "ConditionalEvaluation needs a text-conditioned method (condition_inputs, "
                f"condition_from, encode_image, encode_text); {type(pl_module).__name__} is not "
                "one: drop it from trainer.callbacks"
            )

    def start(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        data, metrics = self.data, {}
        specs = [
            ConditionSpec(c, group, tuple(templates), tuple(data.class_names[c]))
            for c in data.conditions if c in data.phrasings
            for group, templates in data.phrasings[c].items()
        ]  # fmt: skip
        if specs:
            functions = BenchmarkFunctions(pl_module.condition_from, pl_module.encode_text)
            metrics["benchmark"] = ConditionalBenchmark(
                functions, specs, list(data.num_classes), self.eval_queries, self.seed,
                self.max_gallery,
            )  # fmt: skip
        if data.conditions:
            metrics["triplets"] = TripletAccuracy(data.conditions)
        self.metrics = nn.ModuleDict(metrics).to(pl_module.device)
        self._seen = self._bank_seen = 0

    def bank_batch(self, trainer, pl_module, batch, embedding, stage) -> None:
        labels = stacked_labels(batch, list(self.data.num_classes))
        if "benchmark" in self.metrics and labels is not None and self.probe:
            ids = batch_ids(batch)
            if ids is None:  # unique across ranks, in the order seen
                rows = self._bank_seen + torch.arange(len(labels), device=labels.device)
                ids = distributed.rank() + distributed.world_size() * rows
            self._bank_seen += len(labels)
            self.metrics["benchmark"].update_bank(embedding, labels, ids)

    def query_batch(self, trainer, pl_module, batch, embedding, stage) -> None:
        with trainer.precision_plugin.forward_context():
            labels = stacked_labels(batch, list(self.data.num_classes))
            if "benchmark" in self.metrics and labels is not None:
                ids = batch_ids(batch)
                if ids is None:  # unique across ranks, in the order seen
                    rows = self._seen + torch.arange(len(labels), device=labels.device)
                    ids = distributed.rank() + distributed.world_size() * rows
                self._seen += len(labels)
                inputs = pl_module.condition_inputs(batch["image"])
                images = pl_module.encode_image(batch["image"])  # (B, E), unconditioned
                self.metrics["benchmark"].update(inputs, images, labels, ids)
            if "triplets" in self.metrics and {"text", "view", "negative"} <= set(batch):
                correct = triplet_correct(pl_module, batch)
                keep = batch["has_negative"]
                self.metrics["triplets"].update(correct, batch["condition"], keep)

    def finish(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not self.metrics:
            return
        results, gallery = {}, 0
        benchmark = self.metrics["benchmark"] if "benchmark" in self.metrics else None
        if benchmark is not None and benchmark.update_count > 0:
            if int(benchmark.dropped):
                note(f"{stage}: the conditional gallery kept the first {self.max_gallery} images")
            results.update(benchmark.compute())
            gallery = benchmark.gallery_size
        if "triplets" in self.metrics and self.metrics["triplets"].update_count > 0:
            results.update(self.metrics["triplets"].compute())
        log_results(pl_module, {
            f"{stage}/conditional/{c}/{p}/{s}/{metric}": value
            for (c, p, s), metrics in results.items()
            for metric, value in metrics.items()
        })  # fmt: skip
        if stage == "test" and results and trainer.is_global_zero:
            print(conditional_table(results, gallery, min(self.eval_queries, gallery)))
        self.metrics = nn.ModuleDict()
