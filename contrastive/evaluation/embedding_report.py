"""The embedding report: what any method's ``embed`` knows, at every validation and at test.

At validation: kNN accuracy per label field (``val/knn/<field>``) and the embedding's geometry
(alignment of two augmented views, uniformity, RankMe and its centred form, the embedding std),
with a warning when the centred rank collapses. At test, for the trained encoder and for the same
method at a seeded random init (:mod:`contrastive.evaluation.random_init`): kNN and the offline
linear probe per field (``test/knn/<field>``, ``test/linear/<field>``,
``test/random/knn/<field>``, ...), printed once as one table beside the chance (majority-class)
rate of the query split, and drawn as a PNG in the run folder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn

from contrastive import distributed
from contrastive.evaluation.callback import (
    EvaluationCallback,
    batch_ids,
    log_results,
    note,
    run_folder,
    stacked_labels,
)
from contrastive.evaluation.common import BankQueryMetric, MajorityRate
from contrastive.evaluation.geometry import (
    Alignment,
    CentredRankMe,
    EmbeddingStd,
    RankMe,
    Uniformity,
)
from contrastive.evaluation.knn import knn_accuracy
from contrastive.evaluation.linear_probe import DEFAULT_WEIGHT_DECAYS, linear_probe_accuracy
from contrastive.evaluation.random_init import random_init
from contrastive.evaluation.render import FieldRow, embedding_chart, embedding_table, save_image

_GEOMETRY = {
    "uniformity": Uniformity,
    "rankme": RankMe,
    "centred_rankme": CentredRankMe,
    "embedding_std": EmbeddingStd,
}
_NEEDS_TWO = ("uniformity", "centred_rankme", "embedding_std")


class EmbeddingReport(EvaluationCallback):
    """kNN, the linear probe and the geometry of ``embed``, trained against random init.

    Needs nothing from the method but ``embed(images)`` (and ``augment`` for alignment).

    Args:
        knn_k: neighbours of the kNN classifier (20, as InstDisc and DINO).
        knn_temperature: temperature of its weighted vote (0.07).
        linear_probe: fit the offline linear probe at test.
        probe_weight_decays: the weight decays the probe chooses from on a held-out slice.
        probe_held_out: share of the bank held out to choose the decay.
        probe_max_iter: L-BFGS iterations per probe fit.
        random_init: at test, measure the same method at a seeded random init too.
        seed: seed of the random init and of the probe's held-out draw.
        collapse_rank_fraction: warn when the centred RankMe of the validation embeddings falls
            below this fraction of their dimension (and always below 2).
        uniformity_samples: query embeddings kept per process for uniformity.
        max_bank_size: bank rows kept per process (an error beyond: memory is rows x D x 4 B).
        max_query_size: query rows kept per process.
    """

    def __init__(
        self,
        knn_k: int = 20,
        knn_temperature: float = 0.07,
        linear_probe: bool = True,
        probe_weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
        probe_held_out: float = 0.2,
        probe_max_iter: int = 100,
        random_init: bool = True,
        seed: int = 0,
        collapse_rank_fraction: float = 0.02,
        uniformity_samples: int = 4096,
        max_bank_size: int = 65536,
        max_query_size: int = 65536,
    ) -> None:
        if knn_k < 1 or knn_temperature <= 0:
            raise ValueError(
                f"need knn_k >= 1 and knn_temperature > 0, got {knn_k}, {knn_temperature}"
            )
        self.knn_k, self.knn_temperature = knn_k, knn_temperature
        self.linear_probe, self.random_init, self.seed = linear_probe, random_init, seed
        self.probe = dict(
            weight_decays=tuple(probe_weight_decays),
            held_out=probe_held_out,
            max_iter=probe_max_iter,
            seed=seed,
        )
        self.collapse_rank_fraction = collapse_rank_fraction
        self.uniformity_samples = uniformity_samples
        self.limits = dict(max_bank_size=max_bank_size, max_query_size=max_query_size)
        self.metrics = nn.ModuleDict()
        self._baseline: list[LightningModule] = []  # the random-init copy, during a test
        self._sizes = (0, 0)  # queries and bank rows of the last report

    def start(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        fields = list(self.data.num_classes.values())
        metrics: dict[str, nn.Module] = {
            "alignment": Alignment(),
            **{name: cls() for name, cls in _GEOMETRY.items()},
        }
        metrics["uniformity"] = Uniformity(max_samples=self.uniformity_samples)
        if fields:
            metrics["trained"] = BankQueryMetric(fields, **self.limits)
            metrics["chance"] = MajorityRate(fields)
        self._baseline = []
        if stage == "test" and self.random_init and fields:  # the baseline of the classifiers
            self._baseline = [random_init(pl_module, self.seed)]
            metrics["random"] = BankQueryMetric(fields, **self.limits)
        self.metrics = nn.ModuleDict(metrics).to(pl_module.device)

    def _labelled(self, trainer: Trainer, batch: dict, embedding: Tensor, kind: str):
        labels = stacked_labels(batch, list(self.data.num_classes))
        if labels is None or "trained" not in self.metrics:
            return labels
        ids = batch_ids(batch)
        store = self.metrics["trained"]
        (store.update if kind == "query" else store.update_bank)(embedding, labels, ids)
        if "random" in self.metrics:
            with trainer.precision_plugin.forward_context():  # as the step's own embed
                baseline = self._baseline[0].embed(batch["image"])  # (B, D)
            random = self.metrics["random"]
            (random.update if kind == "query" else random.update_bank)(baseline, labels, ids)
        return labels

    def bank_batch(self, trainer, pl_module, batch, embedding, stage) -> None:
        self._labelled(trainer, batch, embedding, "bank")

    def query_batch(self, trainer, pl_module, batch, embedding, stage) -> None:
        labels = self._labelled(trainer, batch, embedding, "query")
        if labels is not None and "chance" in self.metrics:
            self.metrics["chance"].update(labels)
        for name in _GEOMETRY:
            self.metrics[name].update(embedding)
        views = augmented_views(pl_module, batch["image"])
        if views is not None:
            with trainer.precision_plugin.forward_context():
                pair = pl_module.embed(views[0]), pl_module.embed(views[1])
            self.metrics["alignment"].update(*pair)

    def finish(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not self.metrics or self.metrics["rankme"].update_count == 0:
            return
        results = self._geometry(stage, pl_module)
        rows = self._classifiers(stage) if "trained" in self.metrics else []
        for row in rows:
            for key, value in (("knn", row.knn), ("linear", row.linear), ("chance", row.chance),
                               ("random/knn", row.knn_random),
                               ("random/linear", row.linear_random)):  # fmt: skip
                if value == value:  # measured (not nan)
                    results[f"{stage}/{key}/{row.name}"] = value
        log_results(pl_module, results)
        folder = run_folder(trainer)  # on every rank: the log folder is broadcast from rank 0
        if stage == "test" and rows and trainer.is_global_zero:
            queries, bank_rows = self._sizes
            print(embedding_table(rows, self.knn_k, queries, bank_rows))
            chart = embedding_chart(rows, f"What the embedding knows ({queries} test queries)")
            save_image(trainer, folder, "test_report", chart, "test/report")
        if stage == "test" and rows:
            # The table above is the report; Lightning's own would repeat it once per loader.
            trainer.test_loop.verbose = False
        self._baseline = []
        self.metrics = nn.ModuleDict()

    def _geometry(self, stage: str, pl_module: LightningModule) -> dict[str, float]:
        count = sum(distributed.sizes(int(self.metrics["rankme"].count), pl_module.device))
        results = {}
        for name in ("alignment", *_GEOMETRY):
            metric = self.metrics[name]
            if name in _NEEDS_TWO and count < 2:
                note(f"{stage}: {count} query image; {name} needs 2 or more and is skipped")
            elif metric.update_count > 0:
                results[f"{stage}/{name}"] = metric.compute().item()
        if f"{stage}/centred_rankme" in results:
            rank = results[f"{stage}/centred_rankme"]
            dim = int(self.metrics["rankme"].gram.shape[0])
            threshold = max(2.0, self.collapse_rank_fraction * dim)
            if rank < threshold:
                note(
                    f"embedding collapse: centred RankMe {rank:.1f} of {dim} dimensions at step "
                    f"{pl_module.global_step} (warning below {threshold:.1f})"
                )
        return results

    def _classifiers(self, stage: str) -> list[FieldRow]:
        names, counts = list(self.data.num_classes), list(self.data.num_classes.values())
        chance = self.metrics["chance"].compute().reshape(-1).tolist()  # (A,), even for A = 1
        scores: dict[str, list[float]] = {}
        for run in ("trained", "random"):
            if run not in self.metrics:
                continue
            bank, query = self.metrics[run].synced()  # every rank's rows, on every rank
            self._sizes = len(query.features), len(bank.features)
            args = (query.features, query.labels, bank.features, bank.labels, counts)
            knn = knn_accuracy(*args, k=self.knn_k, temperature=self.knn_temperature)
            scores[f"knn/{run}"] = knn.reshape(-1).tolist()
            if stage == "test" and self.linear_probe:
                scores[f"linear/{run}"] = linear_probe_accuracy(*args, **self.probe).tolist()
        nan = [float("nan")] * len(names)
        return [
            FieldRow(
                name,
                n,
                chance[i],
                scores["knn/trained"][i],
                scores.get("knn/random", nan)[i],
                scores.get("linear/trained", nan)[i],
                scores.get("linear/random", nan)[i],
            )  # fmt: skip
            for i, (name, n) in enumerate(zip(names, counts, strict=True))
        ]


def augmented_views(pl_module: LightningModule, images: Tensor) -> tuple[Tensor, Tensor] | None:
    """Two random views of ``images`` in [0, 1] from the method's augmentation (its pipeline
    without the normalisation, which ``embed`` applies), or ``None`` when it has none: then
    two views are the same image and alignment would read 0 without measuring anything."""
    augment = getattr(pl_module, "augment", None)
    transforms = getattr(augment, "transforms", None)
    if transforms is None or len(transforms) == 0:
        return None
    with torch.no_grad():
        float_images = augment.to_float(images)
        return tuple(transforms(float_images).clamp(0, 1) for _ in range(2))
