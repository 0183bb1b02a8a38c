"""Images held in arrays (in memory or memory-mapped): the dataset of the torchvision sets."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from contrastive.datamodules.images import resize_center_crop


class ArrayDataset(Dataset):
    """Images held in a uint8 array (in memory or memory-mapped), with optional labels.

    Each item is ``{"image": uint8 (3, S, S), "labels": {attribute: int}, "index": i}`` (no
    ``"labels"`` without labels).

    Args:
        images: ``(N, 3, H, W)`` uint8 (any strides), or ``(N, 1, H, W)`` grey, given as 3 equal
            channels.
        labels: ``{attribute: (N,)}`` or ``None``.
        indices: Which rows of ``images`` make the dataset (all when ``None``).
        image_size: Output size (centre square, antialiased resize); ``None`` keeps ``H x W``.
        index_offset: Added to the item's ``"index"`` (unique ids across concatenated sets).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: dict[str, np.ndarray] | None = None,
        indices: np.ndarray | None = None,
        image_size: int | None = None,
        index_offset: int = 0,
    ) -> None:
        self.images = images
        self.labels = labels
        self.indices = np.arange(len(images)) if indices is None else np.asarray(indices)
        self.image_size = image_size
        self.index_offset = index_offset

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        row = int(self.indices[index])
        image = torch.from_numpy(np.array(self.images[row]))  # (C, H, W), a writable copy
        if image.shape[0] == 1:  # grey (Fashion-MNIST): the 3 channels every method expects
            image = image.expand(3, -1, -1).contiguous()
        if self.image_size is not None and image.shape[-2:] != (self.image_size,) * 2:
            image = resize_center_crop(image, self.image_size)
        item = {"image": image, "index": self.index_offset + int(index)}
        if self.labels is not None:
            item["labels"] = {attr: int(values[row]) for attr, values in self.labels.items()}
        return item
