"""Callbacks that show what an embedding holds: TensorBoard's projector and neighbour grids."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torchvision.utils import make_grid


class EmbeddingProjector(Callback):
    """At the end of validation, log the embedding projector and a nearest-neighbour grid.

    The projector (TensorBoard's "Projector" tab) shows the first ``num_samples`` validation
    query images as thumbnails (a sprite) at their embeddings, with every attribute label as
    metadata to color by. The grid shows, for ``num_queries`` fixed queries, the query followed by
    its ``num_neighbours`` nearest bank images by cosine similarity. Only with a
    ``TensorBoardLogger``, on rank zero; the embeddings are recomputed here with ``embed``, on at
    most ``num_samples`` images, so the cost is bounded.

    Args:
        num_samples: queries shown in the projector.
        num_bank: bank images searched for the neighbour grid.
        num_queries: rows of the neighbour grid (the first queries, so they stay fixed).
        num_neighbours: neighbours per row.
        thumbnail: side of the projector's thumbnails, in pixels.
    """

    def __init__(
        self,
        num_samples: int = 512,
        num_bank: int = 1024,
        num_queries: int = 8,
        num_neighbours: int = 8,
        thumbnail: int = 32,
    ) -> None:
        self.num_samples, self.num_bank = num_samples, num_bank
        self.num_queries, self.num_neighbours = num_queries, num_neighbours
        self.thumbnail = thumbnail
        self._reset()

    def _reset(self) -> None:
        self._images: dict[int, list[Tensor]] = {0: [], 1: []}
        self._features: dict[int, list[Tensor]] = {0: [], 1: []}
        self._labels: list[dict[str, Tensor]] = []

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset()

    @torch.no_grad()
    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch: dict, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not trainer.is_global_zero or dataloader_idx not in (0, 1):
            return
        limit = self.num_bank if dataloader_idx == 0 else self.num_samples
        room = limit - sum(len(x) for x in self._images[dataloader_idx])
        if room <= 0:
            return
        images = batch["image"][:room]
        self._images[dataloader_idx].append(images.cpu())
        self._features[dataloader_idx].append(pl_module.embed(images).float().cpu())
        if dataloader_idx == 1:
            self._labels.append({k: v[:room].cpu() for k, v in batch.get("labels", {}).items()})

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if logger is None or trainer.sanity_checking or not self._images[1]:
            return
        queries = torch.cat(self._images[1])  # (N, C, H, W) uint8
        features = torch.cat(self._features[1])  # (N, D)
        step = trainer.global_step
        names = list(self._labels[0]) if self._labels else []
        metadata = None
        if names:
            labels = {k: torch.cat([b[k] for b in self._labels]) for k in names}
            metadata = [[str(int(labels[k][i])) for k in names] for i in range(len(features))]
        thumbs = F.interpolate(queries.float() / 255, size=self.thumbnail, mode="bilinear")
        logger.experiment.add_embedding(
            features,
            metadata=metadata,
            metadata_header=names or None,
            label_img=thumbs,
            global_step=step,
            tag="val/embedding",
        )
        if self._images[0]:
            grid = neighbour_grid(
                queries[: self.num_queries],
                features[: self.num_queries],
                torch.cat(self._images[0]),
                torch.cat(self._features[0]),
                self.num_neighbours,
            )
            logger.experiment.add_image("val/nearest_neighbours", grid, global_step=step)
        self._reset()


def neighbour_grid(
    queries: Tensor, query_features: Tensor, bank: Tensor, bank_features: Tensor, k: int
) -> Tensor:
    """One row per query: the query, then its ``k`` nearest bank images by cosine similarity.

    Args:
        queries: ``(Q, C, H, W)`` uint8 images; ``query_features`` their ``(Q, D)`` embeddings.
        bank: ``(M, C, H, W)`` uint8 images; ``bank_features`` their ``(M, D)`` embeddings.
        k: neighbours per row (at most M).

    Returns:
        A ``(C, H', W')`` uint8 grid image.
    """
    similarity = F.normalize(query_features, dim=1) @ F.normalize(bank_features, dim=1).T
    nearest = similarity.topk(min(k, len(bank)), dim=1).indices  # (Q, k)
    rows = torch.cat([queries[:, None], bank[nearest]], dim=1)  # (Q, 1 + k, C, H, W)
    return make_grid(rows.flatten(0, 1), nrow=rows.shape[1], padding=2, pad_value=255)
