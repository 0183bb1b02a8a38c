"""Pictures of an embedding at every validation: the projector and a nearest-neighbour grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torchvision.utils import make_grid

from contrastive.evaluation.callback import run_folder, step_embedding
from contrastive.evaluation.render import save_image, scatter_chart


class EmbeddingProjector(Callback):
    """At the end of validation, the embedding projector and a nearest-neighbour grid.

    With a ``TensorBoardLogger``: TensorBoard's "Projector" tab shows the first ``num_samples``
    validation query images as thumbnails (a sprite) at their embeddings, with every label field
    as metadata to colour by, and an image shows, for ``num_queries`` fixed queries, the query
    followed by its ``num_neighbours`` nearest bank images by cosine similarity. With any other
    logger (CSV, none): the same grid and a 2-D PCA of the embeddings, one panel per label field,
    as PNG files under the run folder's ``projector/``. On rank zero, on at most ``num_samples``
    queries and ``num_bank`` bank images, from the embeddings the validation step returned.

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
        if not trainer.is_global_zero or dataloader_idx not in (0, 1) or "image" not in batch:
            return
        loaders = len(trainer.num_val_batches)
        role = 1 if loaders == 1 else dataloader_idx  # a lone loader holds the queries
        limit = self.num_bank if role == 0 else self.num_samples
        room = limit - sum(len(x) for x in self._images[role])
        if room <= 0:
            return
        embedding = step_embedding(pl_module, outputs, batch)
        self._images[role].append(batch["image"][:room].cpu())
        self._features[role].append(embedding[:room].float().cpu())
        if role == 1:
            self._labels.append({k: v[:room].cpu() for k, v in batch.get("labels", {}).items()})

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        folder = run_folder(trainer) / "projector"  # on every rank: broadcast from rank 0
        if not trainer.is_global_zero or not self._images[1]:
            return
        logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        queries = torch.cat(self._images[1])  # (N, C, H, W) uint8
        features = torch.cat(self._features[1])  # (N, D)
        names = list(self._labels[0]) if self._labels else []
        labels = {k: torch.cat([b[k] for b in self._labels]) for k in names}
        grid = None
        if self._images[0]:
            grid = neighbour_grid(
                queries[: self.num_queries],
                features[: self.num_queries],
                torch.cat(self._images[0]),
                torch.cat(self._features[0]),
                self.num_neighbours,
            )
        step = trainer.global_step
        if logger is not None:
            metadata = [[str(int(labels[k][i])) for k in names] for i in range(len(features))]
            thumbs = F.interpolate(queries.float() / 255, size=self.thumbnail, mode="bilinear")
            logger.experiment.add_embedding(
                features,
                metadata=metadata if names else None,
                metadata_header=names or None,
                label_img=thumbs,
                global_step=step,
                tag="val/embedding",
            )
            if grid is not None:
                logger.experiment.add_image("val/nearest_neighbours", grid, global_step=step)
        else:
            points = pca_2d(features).numpy()
            title = f"validation queries at step {step} (PCA of the embedding)"
            chart = scatter_chart(points, {k: v.numpy() for k, v in labels.items()}, title)
            save_image(trainer, folder, f"embedding_step{step}", chart, "val/embedding")
            if grid is not None:
                image = grid.permute(1, 2, 0).numpy()  # (H, W, 3)
                save_image(trainer, folder, f"neighbours_step{step}", image, "val/neighbours")
        self._reset()


def pca_2d(features: Tensor) -> Tensor:
    """The ``(N, D)`` features on their two principal axes: ``(N, 2)`` (zeros when N < 2)."""
    x = features.double() - features.double().mean(dim=0)
    if len(x) < 2:
        return torch.zeros(len(x), 2)
    _, _, v = torch.linalg.svd(x, full_matrices=False)  # v: (min(N, D), D)
    axes = v[:2].T  # (D, <=2)
    points = x @ axes
    return F.pad(points, (0, 2 - points.shape[1])).float()


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
