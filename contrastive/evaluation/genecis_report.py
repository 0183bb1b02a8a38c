"""The GeneCIS table at test, for any method with image and text towers.

On a data module whose query batches carry their own galleries (``GeneCISDataModule``): each
record's target rank among its gallery for the conditioned model (a text-conditioned method)
and GeneCIS's image, text and image+text baselines from the same towers
(:mod:`contrastive.evaluation.genecis_benchmark`), logged as
``test/genecis/<task>/<scorer>/R@<k>`` and printed as one table with the average R@1 over the
tasks and the records each task scored and skipped. On any other data it does nothing, so a
config can name it beside the other callbacks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from lightning.pytorch import LightningModule, Trainer

from contrastive.datamodules.common import DataError
from contrastive.evaluation.callback import EvaluationCallback, batch_ids, log_results
from contrastive.evaluation.genecis_benchmark import (
    KS,
    GeneCISRecall,
    Results,
    TextImageModel,
    average_recall,
    gallery_scores,
    scorers_of,
    target_ranks,
)


class GeneCISEvaluation(EvaluationCallback):
    """GeneCIS's Recall@1/2/3 per task of a method with ``encode_image`` and ``encode_text``
    (CLIP, LiT), and of its conditioned embedding when it has one (``Conditional``)."""

    def __init__(self) -> None:
        self.metric: GeneCISRecall | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "predict" or not self.data.gallery_tasks:
            return
        if not isinstance(pl_module, TextImageModel):
            raise DataError(
                f"GeneCIS ranks galleries by image and text embeddings; {type(pl_module).__name__}"
                " has no encode_image and encode_text (use a CLIP, LiT or Conditional model)"
            )

    def start(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.metric = None
        if self.data.gallery_tasks:
            tasks, scorers = list(self.data.gallery_tasks), scorers_of(pl_module)
            self.metric = GeneCISRecall(tasks, scorers).to(pl_module.device)

    def query_batch(self, trainer, pl_module, batch, embedding, stage) -> None:
        if self.metric is None:
            return
        with trainer.precision_plugin.forward_context():
            scores = gallery_scores(
                pl_module, batch["image"], batch["text"], batch["gallery"], batch["gallery_mask"]
            )
        ids = batch_ids(batch)
        if ids is None:
            raise DataError("GeneCIS batches need their records' 'index' (dataset ids)")
        ranks = {scorer: target_ranks(s) for scorer, s in scores.items()}
        self.metric.update(ranks, torch.as_tensor(batch["task"]), ids)

    def finish(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.metric is None:
            return
        results, scored = self.metric.compute()
        average = average_recall(results, self.metric.scorers)
        logged = {
            f"{stage}/genecis/{task}/{scorer}/{k}": value
            for (task, scorer), metrics in results.items()
            for k, value in metrics.items()
        }
        logged.update({f"{stage}/genecis/average/{s}/R@1": v for s, v in average.items()})
        log_results(pl_module, logged)
        if trainer.is_global_zero:
            print(genecis_table(results, self.metric.scorers, self.data.gallery_tasks, scored))
        self.metric = None


def genecis_table(
    results: Results,
    scorers: Sequence[str],
    records: Mapping[str, int],
    scored: Mapping[str, int],
) -> str:
    """GeneCIS's table: a row per scorer, Recall@1/2/3 per task, the average R@1 when several
    tasks were scored; then each task's records scored and skipped."""
    tasks = [t for t in records if any((t, s) in results for s in scorers)]
    several = len(tasks) > 1
    width = 7 * len(KS) + 2
    head = f"{'':<13}" + "".join(f"{t:>{width}}" for t in tasks) + (f"{'average':>9}" * several)
    sub = f"{'scorer':<13}" + ("  " + "".join(f"{f'R@{k}':>7}" for k in KS)) * len(tasks)
    lines = [
        "GeneCIS (Vaze et al. 2023): the target's rank among its gallery, Recall@k",
        head,
        sub + (f"{'R@1':>9}" * several),
    ]
    average = average_recall(results, scorers)
    for scorer in scorers:
        line = f"{scorer:<13}"
        for task in tasks:
            metrics = results.get((task, scorer), {})
            line += "  " + "".join(f"{metrics.get(f'R@{k}', float('nan')):>7.3f}" for k in KS)
        lines.append(line + (f"{average.get(scorer, float('nan')):>9.3f}" * several))
    counts = [
        f"{task} {scored.get(task, 0)} of {n}" + (
            f" ({n - scored.get(task, 0)} skipped: missing or unreadable images)"
            if scored.get(task, 0) < n else ""
        )
        for task, n in records.items()
    ]  # fmt: skip
    lines.append("records scored: " + "; ".join(counts))
    return "\n".join(lines)
