"""Fashion-MNIST (Xiao et al. 2017, arXiv:1708.07747) from its four IDX files.

Debian's ``dataset-fashion-mnist`` package puts them, gzipped, under
``/usr/share/datasets/fashion-mnist``; torchvision's download under ``ROOT/FashionMNIST/raw``
(both gzipped and not). Either folder, either form, is read here into uint8 arrays; the data
module is ``VisionSetDataModule(name="fashion_mnist")``.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from contrastive.datamodules.common import DataError

#: Where Debian's ``dataset-fashion-mnist`` package puts the four IDX files.
FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: The labels' names (the IDX files carry none), as the dataset's README gives them.
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format: big-endian sizes, unsigned bytes), gzipped or not.

    Raises:
        DataError: One line naming the file when it is not an unsigned-byte IDX file of the
            size its header says.
    """
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataError(f"{path}: not a readable gzip file ({err})") from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or not 1 <= raw[3] <= 4:
        raise DataError(f"{path}: not an unsigned-byte IDX file (header {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    start = 4 + 4 * ndim
    if len(raw) != start + int(np.prod(shape)):
        raise DataError(f"{path}: {len(raw) - start} bytes of data; its header says {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(shape)


def fashion_mnist_file(root: Path, name: str) -> Path | None:
    """IDX file ``name`` under ``root`` or its ``FashionMNIST/raw``, raw or ``.gz``; else None."""
    for folder in (root, root / "FashionMNIST" / "raw"):  # Debian's, torchvision's download
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def missing_fashion_mnist(root: Path, split: str) -> list[str]:
    """The IDX files of ``split`` (``"train"`` or ``"test"``) found under ``root`` in neither
    form nor layout."""
    return [name for name in FASHION_MNIST_FILES[split] if fashion_mnist_file(root, name) is None]


def read_fashion_mnist(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 1, 32, 32)`` uint8 images, the 28 px ones padded with 2 black pixels a side (the
    cosine of two images is unchanged), and their ``(N,)`` int64 labels."""
    images, labels = (
        read_idx(fashion_mnist_file(root, name)) for name in FASHION_MNIST_FILES[split]
    )
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"{root}: Fashion-MNIST {split} has {images.shape} images, {labels.shape} labels"
        )
    if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{root}: Fashion-MNIST {split} label {labels.max()} beyond the 10 classes")
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))[:, None]  # (N, 1, 32, 32)
    return padded, labels.astype(np.int64)
