"""What every evaluation callback shares: the data's offer, the two loaders, and the embeddings.

Evaluation rides alongside any method, as Lightning callbacks: the method's
``validation_step`` / ``test_step`` return ``{"embedding": embed(images)}`` and the callbacks
read it (computing nothing twice), bank batches and query batches apart. A subclass of
:class:`EvaluationCallback` implements :meth:`~EvaluationCallback.start`,
:meth:`~EvaluationCallback.bank_batch`, :meth:`~EvaluationCallback.query_batch` and
:meth:`~EvaluationCallback.finish`, each for a stage, ``"val"`` or ``"test"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from contrastive.datamodules.common import DataError, EvaluationData, check_evaluation_data


class EvaluationCallback(Callback):
    """Base of the evaluation callbacks (see the module docstring).

    After ``setup``, ``self.data`` is the data module's checked
    :class:`~contrastive.datamodules.common.EvaluationData`.
    """

    data: EvaluationData

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "predict":
            return
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None:
            raise DataError(f"{type(self).__name__} needs a data module (not bare dataloaders)")
        self.data = check_evaluation_data(datamodule)

    # ---- what a subclass implements ---------------------------------------------------------

    def start(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Before the stage's first batch: reset the metrics."""

    def bank_batch(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: dict,
        embedding: Tensor,
        stage: str,
    ) -> None:
        """One batch of the bank loader (training images, no augmentation)."""

    def query_batch(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: dict,
        embedding: Tensor,
        stage: str,
    ) -> None:
        """One batch of the query loader (held-out images)."""

    def finish(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """After the stage's last batch: compute, log, report."""

    # ---- Lightning's hooks ------------------------------------------------------------------

    def _start(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        loaders = trainer.num_val_batches if stage == "val" else trainer.num_test_batches
        expected = 2 if self.data.has_bank else 1
        if loaders and len(loaders) != expected:
            kind = "[bank, query]" if self.data.has_bank else "[query]"
            raise DataError(
                f"{type(trainer.datamodule).__name__} gives {len(loaders)} {stage} loaders; its "
                f"evaluation_data() says {kind}"
            )
        self.start(trainer, pl_module, stage)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(trainer, pl_module, "test")

    def _batch(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        idx: int,
        stage: str,
    ) -> None:
        if not isinstance(batch, dict) or "image" not in batch:  # every sample was skipped
            return
        embedding = step_embedding(pl_module, outputs, batch)
        if idx == self.data.query_loader:
            self.query_batch(trainer, pl_module, batch, embedding, stage)
        elif self.data.has_bank and idx == 0:
            self.bank_batch(trainer, pl_module, batch, embedding, stage)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._batch(trainer, pl_module, outputs, batch, dataloader_idx, "val")

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._batch(trainer, pl_module, outputs, batch, dataloader_idx, "test")

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.finish(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.finish(trainer, pl_module, "test")


def step_embedding(pl_module: LightningModule, outputs: Any, batch: dict) -> Tensor:
    """The ``(B, D)`` embeddings the evaluation step returned, or ``embed`` of the batch's
    images when it returned none."""
    if isinstance(outputs, dict) and isinstance(outputs.get("embedding"), Tensor):
        return outputs["embedding"]
    return pl_module.embed(batch["image"])


def stacked_labels(batch: dict, fields: list[str]) -> Tensor | None:
    """``(B, A)`` labels of ``fields`` in that order, or ``None`` when the batch has none."""
    labels = batch.get("labels")
    if not fields or not isinstance(labels, dict) or any(f not in labels for f in fields):
        return None
    return torch.stack([labels[f] for f in fields], dim=1)


def batch_ids(batch: dict) -> Tensor | None:
    """The batch's ``(B,)`` dataset ids (``"index"``), or ``None``."""
    ids = batch.get("index")
    return ids if isinstance(ids, Tensor) else None


def log_results(pl_module: LightningModule, results: dict[str, float]) -> None:
    """Log epoch-level results computed from synced metrics (equal on every rank)."""
    if results:
        pl_module.log_dict(
            {k: torch.tensor(float(v), device=pl_module.device) for k, v in results.items()},
            sync_dist=True,
        )


def run_folder(trainer: Trainer) -> Path:
    """Where a run's files go: the logger's version folder, else the Trainer's root folder.

    Call it on every rank: under DDP, Lightning broadcasts the folder from rank 0.
    """
    return Path(trainer.log_dir or trainer.default_root_dir)


def note(message: str) -> None:
    """A one-line note about evaluation, once per message (on rank zero)."""
    rank_zero_warn(message)
