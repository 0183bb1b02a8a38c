"""``contrastive predict`` writes what it computes: the embeddings and the ids of their images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from contrastive import distributed
from contrastive.evaluation.callback import run_folder


class EmbeddingWriter(BasePredictionWriter):
    """Writes the predict loader's embeddings into the run folder, as ``contrastive embed`` does:
    ``predict/embeddings.npy`` (``(N, D)`` float32, row ``i`` the image on line ``i``) and
    ``predict/ids.txt`` (one JSON value per line: the batch's ``"path"`` when it has one, else
    its ``"index"``). A folder already there is kept: the next is ``predict_1``, ... Under DDP
    each rank writes its own rows as ``embeddings_rank<r>.npy`` and ``ids_rank<r>.txt``.

    Args:
        folder: the folder name under the run folder.
    """

    def __init__(self, folder: str = "predict") -> None:
        super().__init__(write_interval="batch")
        self.folder = folder
        self._rows: list[torch.Tensor] = []
        self._ids: list[Any] = []

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._rows, self._ids = [], []

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if not isinstance(batch, dict) or "image" not in batch:
            return
        ids = batch.get("path", batch.get("index"))
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        self._rows.append(prediction.detach().float().cpu())
        self._ids.extend(str(i) if isinstance(i, Path) else i for i in ids)

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._rows:
            return
        folder = self.output_folder(trainer)
        suffix = f"_rank{distributed.rank()}" if distributed.is_distributed() else ""
        np.save(folder / f"embeddings{suffix}.npy", torch.cat(self._rows).numpy())
        lines = "".join(json.dumps(i) + "\n" for i in self._ids)
        (folder / f"ids{suffix}.txt").write_text(lines, encoding="utf-8")
        self._rows, self._ids = [], []

    def output_folder(self, trainer: Trainer) -> Path:
        """A new folder for this predict run (rank 0 picks the name; every rank writes there)."""
        base = run_folder(trainer)
        name, n = self.folder, 0
        while (base / name).exists():
            n += 1
            name = f"{self.folder}_{n}"
        name = trainer.strategy.broadcast(name)
        (base / name).mkdir(parents=True, exist_ok=True)
        return base / name
