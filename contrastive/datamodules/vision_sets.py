"""The torchvision sets: CIFAR-10, CIFAR-100, STL-10 and Fashion-MNIST, as uint8 batches with
class labels.

torchvision downloads and checks them (``download=True``, in ``prepare_data`` only, so one
process per machine fetches); this module then reads the files it left straight into numpy
arrays: the CIFAR pickle batches and STL-10's binary files (memory-mapped: its 100,000
unlabeled images are 2.8 GB). Items are uint8 tensors already, with none of the per-item PIL
round trip of the torchvision dataset classes. The CIFAR pickles are read by an unpickler that
admits numpy arrays, lists, dicts, numbers, bytes and str and nothing else, so a planted batch
file cannot run code: it is refused with one line naming it.

=========  ===================================  ================================  ==========
name       folder under ``root``                labels                            native px
=========  ===================================  ================================  ==========
cifar10    ``cifar-10-batches-py``              class (10)                        32
cifar100   ``cifar-100-python``                 class (100), superclass (20)      32
stl10      ``stl10_binary``                     class (10)                        96
fashion_   the four IDX files (or ``.gz``), or  class (10)                        28, padded
mnist      ``FashionMNIST/raw`` under them                                        to 32
=========  ===================================  ================================  ==========

Fashion-MNIST (Xiao et al. 2017) is read from its IDX files, gzipped or not; its default root is
``/usr/share/datasets/fashion-mnist`` when Debian's ``dataset-fashion-mnist`` package has put
them there. Its 28 px grey images are padded with 2 black pixels a side to 32 (the cosine of two
images, and so the raw-pixel kNN, is unchanged) and given as 3 equal channels.

The sets have a train and a test split. Validation and test return ``[bank, query]``: the
bank is drawn from the training images, the query is the test split (as the kNN monitors of
SSL papers do) or, with ``val_fraction``, a held-out part of the training split for
validation.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from contrastive.datamodules.arrays import ArrayDataset
from contrastive.datamodules.common import BankQueryDataModule, DataError, Tokenizer
from contrastive.datamodules.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_FILES,
    FASHION_MNIST_ROOT,
    missing_fashion_mnist,
    read_fashion_mnist,
)

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric


class VisionSetMissingError(DataError, FileNotFoundError):
    """The set's files are not under ``root``; the message says how to get them."""


class _Spec(NamedTuple):
    title: str
    folder: str
    files: tuple[str, ...]  # what must exist under root/folder
    source: str  # where the archive comes from
    download_size: str


SPECS: dict[str, _Spec] = {
    "cifar10": _Spec(
        "CIFAR-10",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta"),
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "170 MB",
    ),
    "cifar100": _Spec(
        "CIFAR-100",
        "cifar-100-python",
        ("train", "test", "meta"),
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "170 MB",
    ),
    "stl10": _Spec(
        "STL-10",
        "stl10_binary",
        (
            "train_X.bin",
            "train_y.bin",
            "test_X.bin",
            "test_y.bin",
            "unlabeled_X.bin",
            "class_names.txt",
        ),
        "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
        "2.6 GB",
    ),
}


SPECS["fashion_mnist"] = _Spec(
    "Fashion-MNIST",
    "",
    tuple(f for pair in FASHION_MNIST_FILES.values() for f in pair),
    "the IDX files of github.com/zalandoresearch/fashion-mnist (apt-get install "
    "dataset-fashion-mnist puts them in /usr/share/datasets/fashion-mnist)",
    "30 MB",
)


class Split(NamedTuple):
    """One split in memory: ``(N, 3, H, W)`` uint8 images and ``{attribute: (N,)}`` labels."""

    images: np.ndarray
    labels: dict[str, np.ndarray] | None


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and plain values; any other class or function is refused.

    What the CIFAR archives (Python 2 pickles) and a numpy array pickled by Python 3 name:
    the array's reconstructor, ``ndarray``, ``dtype`` and, for bytes, ``_codecs.encode``.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"it names {module}.{name}")


def _unpickle(path: Path) -> dict:
    """A CIFAR batch file: numpy arrays and plain values only (see :class:`_ArraysOnly`)."""
    try:
        with open(path, "rb") as f:
            return _ArraysOnly(f, encoding="latin1").load()  # the archives: Python 2 pickles
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise DataError(
            f"{path}: not a CIFAR batch ({err}); only numpy arrays, lists, dicts, bytes and "
            "str are read from it"
        ) from None


def _cifar_split(folder: Path, files: list[str], label_keys: dict[str, str]) -> Split:
    batches = [_unpickle(folder / name) for name in files]
    images = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)  # (N, 3, H, W)
    labels = {
        attr: np.concatenate([np.asarray(b[key], dtype=np.int64) for b in batches])
        for attr, key in label_keys.items()
    }
    return Split(np.ascontiguousarray(images, dtype=np.uint8), labels)


def _stl10_images(path: Path) -> np.ndarray:
    # Column-major 96 x 96 planes: (N, 3, W, H) on disk, transposed lazily, per item.
    return np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)


def read_split(name: str, root: str | Path, split: str) -> Split:
    """Read split ``"train"``, ``"test"`` or (STL-10) ``"unlabeled"`` of set ``name``.

    Raises:
        VisionSetMissingError: If the set's files are not under ``root``.
    """
    if name == "fashion_mnist":
        return _fashion_mnist_split(Path(root).expanduser(), split)
    spec = SPECS[name]
    folder = Path(root).expanduser() / spec.folder
    missing = [f for f in spec.files if not (folder / f).is_file()]
    if missing:
        raise VisionSetMissingError(
            f"{spec.title} not found: {folder} lacks {', '.join(missing)}; pass "
            f"--data.download true to fetch it ({spec.download_size}) or extract {spec.source} "
            f"into {Path(root).expanduser()}"
        )
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        return _cifar_split(folder, files, {"class": "labels"})
    if name == "cifar100":
        keys = {"class": "fine_labels", "superclass": "coarse_labels"}
        return _cifar_split(folder, [split], keys)
    images = _stl10_images(folder / f"{split}_X.bin")
    if split == "unlabeled":
        return Split(images, None)
    labels = np.fromfile(folder / f"{split}_y.bin", dtype=np.uint8).astype(np.int64) - 1
    return Split(images, {"class": labels})


def read_class_names(name: str, root: str | Path) -> dict[str, tuple[str, ...]]:
    """The class names of each label attribute of set ``name``, from its own files."""
    if name == "fashion_mnist":
        return {"class": FASHION_MNIST_CLASSES}
    folder = Path(root).expanduser() / SPECS[name].folder
    if name == "cifar10":
        return {"class": tuple(_unpickle(folder / "batches.meta")["label_names"])}
    if name == "cifar100":
        meta = _unpickle(folder / "meta")
        return {
            "class": tuple(meta["fine_label_names"]),
            "superclass": tuple(meta["coarse_label_names"]),
        }
    lines = (folder / "class_names.txt").read_text().splitlines()
    return {"class": tuple(line.strip() for line in lines if line.strip())}


def _fashion_mnist_split(root: Path, split: str) -> Split:
    missing = missing_fashion_mnist(root, split)
    if missing:
        spec = SPECS["fashion_mnist"]
        raise VisionSetMissingError(
            f"{spec.title} not found: {root} lacks {', '.join(missing)} (or .gz); pass "
            f"--data.download true to fetch it ({spec.download_size}) or put {spec.source} in "
            f"{root}"
        )
    images, labels = read_fashion_mnist(root, split)
    return Split(images, {"class": labels})


class VisionSetDataModule(BankQueryDataModule):
    """CIFAR-10 (Krizhevsky 2009), CIFAR-100 (same report), STL-10 (Coates et al. 2011) or
    Fashion-MNIST (Xiao et al. 2017, arXiv:1708.07747), with its official 60k/10k split.

    See the module docstring for the folders, labels and evaluation loaders.

    Args:
        name: ``"cifar10"``, ``"cifar100"``, ``"stl10"`` or ``"fashion_mnist"``.
        root: The folder holding the set's folder (torchvision's layout); for Fashion-MNIST the
            folder of its IDX files. ``None``: ``data``, or for Fashion-MNIST Debian's
            ``/usr/share/datasets/fashion-mnist`` when it exists.
        download: Fetch the set into ``root`` in ``prepare_data`` if it is not there. Off by
            default: without the files, ``setup`` fails with a line saying how to get them.
        image_size: Output height and width; ``None`` for the native size (32 or 96).
        unlabeled: STL-10 only: train on its 100,000 unlabeled images as well (then training
            batches carry no labels; the bank still comes from the labelled ones).
        val_fraction: Share of the labelled training images held out as the validation query;
            0 uses the test split for validation too.
        num_bank: Most training images in the kNN bank.
        seed: Seed of the held-out split and the bank's draw.
        batch_size: Train batch size (the last incomplete batch is dropped).
        eval_batch_size: Batch size of the bank, validation, test and predict loaders.
        num_workers: DataLoader worker processes (kept alive between epochs when > 0). Reading
            from memory is cheap: 0 or 1 is usually enough below 96 px.
    """

    def __init__(
        self,
        name: str = "cifar10",
        root: str | Path | None = None,
        download: bool = False,
        image_size: int | None = None,
        unlabeled: bool = False,
        val_fraction: float = 0.0,
        num_bank: int = 10_000,
        seed: int = 0,
        batch_size: int = 256,
        eval_batch_size: int = 512,
        num_workers: int = 2,
    ) -> None:
        super().__init__()
        if name not in SPECS:
            raise ValueError(f"unknown set {name!r}; expected one of {sorted(SPECS)}")
        if unlabeled and name != "stl10":
            raise ValueError(f"unlabeled=True is for stl10 only; {name} has no unlabeled split")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be >= 1 or None, got {image_size}")
        for arg, value in (
            ("num_bank", num_bank),
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
        ):
            if value < 1:
                raise ValueError(f"{arg} must be >= 1, got {value}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0 (a numpy seed), got {seed}")
        self.save_hyperparameters()
        self.name = name
        if root is None:
            debian = name == "fashion_mnist" and FASHION_MNIST_ROOT.is_dir()
            root = FASHION_MNIST_ROOT if debian else "data"
        self.root = Path(root).expanduser()
        self.download = download
        self.image_size = image_size
        self.unlabeled = unlabeled
        self.val_fraction = val_fraction
        self.num_bank = num_bank
        self.seed = seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.tokenizer: Tokenizer | None = None  # these sets carry no captions
        self._class_names: dict[str, tuple[str, ...]] = {}
        self._datasets: dict[str, ArrayDataset] = {}

    @property
    def num_classes(self) -> dict[str, int]:
        """Classes of each label attribute (known after ``setup``)."""
        return {attr: len(names) for attr, names in self._class_names.items()}

    @property
    def class_names(self) -> dict[str, tuple[str, ...]]:
        """Class names of each label attribute, from the set's own files (after ``setup``)."""
        return dict(self._class_names)

    def prepare_data(self) -> None:
        """Download the set with torchvision when ``download`` is set (once per machine)."""
        if not self.download:
            return
        import torchvision.datasets as sets  # only when downloading

        root = str(self.root)
        if self.name == "fashion_mnist":
            if missing_fashion_mnist(self.root, "train") + missing_fashion_mnist(self.root, "test"):
                sets.FashionMNIST(root, train=True, download=True)  # both splits' files
        elif self.name == "stl10":
            sets.STL10(root, split="train+unlabeled", download=True)
        else:
            cls = sets.CIFAR10 if self.name == "cifar10" else sets.CIFAR100
            cls(root, train=True, download=True)

    def setup(self, stage: str | None = None) -> None:
        """Read the splits (memory-mapped for STL-10) and draw the held-out split and bank."""
        if self._datasets:
            return
        train = read_split(self.name, self.root, "train")
        test = read_split(self.name, self.root, "test")
        self._class_names = read_class_names(self.name, self.root)
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(train.images))
        num_val = round(self.val_fraction * len(order))
        kept = np.sort(order[num_val:])
        bank = np.sort(rng.permutation(kept)[: self.num_bank])
        train_set = ArrayDataset(train.images, train.labels, kept, self.image_size)
        if self.unlabeled:  # labelled and unlabeled rows in one array would need a copy
            extra = read_split(self.name, self.root, "unlabeled")
            train_set = torch.utils.data.ConcatDataset(
                [
                    ArrayDataset(train.images, None, kept, self.image_size),
                    ArrayDataset(extra.images, None, None, self.image_size, len(kept)),
                ]
            )
        val = (
            ArrayDataset(train.images, train.labels, np.sort(order[:num_val]), self.image_size)
            if num_val
            else ArrayDataset(test.images, test.labels, None, self.image_size)
        )
        self._datasets = {
            "train": train_set,
            "bank": ArrayDataset(train.images, train.labels, bank, self.image_size),
            "val": val,
            "test": ArrayDataset(test.images, test.labels, None, self.image_size),
        }
        if len(train_set) < self.batch_size:
            raise ValueError(
                f"{len(train_set)} training images, fewer than batch_size ({self.batch_size})"
            )
        rank_zero_info(
            f"{SPECS[self.name].title}: {len(train_set)} train, {len(bank)} bank, "
            f"{len(val)} validation and {len(test.images)} test images"
        )
