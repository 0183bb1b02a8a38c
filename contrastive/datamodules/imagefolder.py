"""Image folders: ImageNet's train and val layouts, or any folder of images, labelled or not.

Layouts (``root`` is scanned once in ``setup``, recursively, in sorted order):

- ``labelled=True`` (ImageNet train): every first-level folder of ``root`` is a class, in
  sorted order, and holds that class's images at any depth. A ``subset`` file (one class
  folder name per line, ``#`` comments allowed, e.g. an ImageNet-100 list) keeps only the
  classes it names, renumbered in sorted order.
- ``labelled=False``: every image under ``root``, no labels.
- Held-out images: ``val_root`` when given, else a ``val_fraction`` of ``root`` drawn with
  ``seed``. ``val_root`` is laid out like ``root`` (class folders), or, with a ``val_labels``
  file, is ImageNet's val layout: one flat folder and a file of ``filename,class`` lines.

Images are files with a known image extension (``IMAGE_EXTENSIONS``, any case); other files
(a README, a CSV) are counted and ignored, as are hidden files and folders. Links are followed
once (:func:`~contrastive.files.scan_images`): a link back to a parent folder does not loop, and
a file reached again through a link (a link to a sibling folder) is listed once. The format is
then told by each file's bytes, and a file that cannot be used (corrupt, truncated, empty, not
an image, above ``max_pixels``) becomes a :class:`Skipped`: it is dropped from its batch and
counted, and the method warns once per epoch naming the first few. Decoding and resizing (centre
crop, or ``resize="letterbox"`` for the whole image on a white square) happen in the loader
workers (:func:`~contrastive.datamodules.images.load_image`), so batches arrive as uint8
``(B, 3, image_size, image_size)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset

from contrastive.datamodules.common import (
    BankQueryDataModule,
    Skipped,
    Tokenizer,
    default_num_workers,
)
from contrastive.datamodules.device_decode import DeviceDecoding, read_encoded
from contrastive.datamodules.folder_lists import (
    ImageFolderError,
    classes_to_keep,
    read_val_labels,
)
from contrastive.datamodules.images import DEFAULT_MAX_PIXELS, Resize, check_resize, load_image
from contrastive.files import IMAGE_EXTENSIONS, scan_images

_LABEL = "class"  # the one attribute image folders label


class PathArray:
    """Many paths in two numpy arrays (bytes and offsets) instead of a list of ``str``.

    DataLoader workers are forked copies of the main process; reading a Python object bumps
    its reference count and so copies the memory page it sits on into the worker. A list of
    1.3 million path strings (ImageNet) would be copied into every worker that way, numpy
    buffers are not.
    """

    def __init__(self, paths: Sequence[Path | str]) -> None:
        encoded = [os.fsencode(p) for p in paths]
        self._offsets = np.cumsum([0] + [len(e) for e in encoded], dtype=np.int64)
        self._bytes = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> str:
        start, end = self._offsets[index], self._offsets[index + 1]
        return os.fsdecode(self._bytes[start:end].tobytes())


class ImageFolderDataset(Dataset):
    """Image files read with :func:`load_image`, with their class if labelled.

    Each item is ``{"image": uint8 (3, S, S), "labels": {"class": int}, "index": i, "path": str}``
    (no ``"labels"`` when unlabelled), or a :class:`Skipped` for a file that cannot be used.

    Args:
        paths: The image files.
        labels: The class of each file, or ``None``.
        image_size: Output height and width ``S``.
        max_pixels: Largest image read, in pixels (see :func:`load_image`).
        resize: ``"crop"`` (shorter side resized, centre cropped) or ``"letterbox"``.
        decode_on_device: Give a JPEG's bytes instead of its pixels (:func:`read_encoded`).
    """

    def __init__(
        self,
        paths: Sequence[Path | str],
        labels: Sequence[int] | None,
        image_size: int,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        resize: Resize = "crop",
        decode_on_device: bool = False,
    ) -> None:
        if labels is not None and len(labels) != len(paths):
            raise ValueError(f"got {len(labels)} labels for {len(paths)} paths")
        check_resize(resize, image_size)
        self.paths = PathArray(paths)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.image_size = image_size
        self.max_pixels = max_pixels
        self.resize = resize
        self.read = read_encoded if decode_on_device else load_image

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict | Skipped:
        path = self.paths[index]
        image = self.read(path, self.image_size, self.max_pixels, self.resize)
        if isinstance(image, Skipped):
            return image
        item = {"image": image, "index": int(index), "path": path}
        if self.labels is not None:
            item["labels"] = {_LABEL: int(self.labels[index])}
        return item


class ImageFolderDataModule(DeviceDecoding, BankQueryDataModule):
    """Images from folders on disk: ImageNet's layouts or any folder, labelled or not.

    See the module docstring for the layouts. Validation and test return ``[bank, query]``:
    ``bank`` is up to ``num_bank`` training images drawn with ``seed`` (no augmentation; the
    kNN memory), ``query`` the held-out images. Without labels the bank is empty (there is
    nothing to vote with) and the query still gives the embedding metrics. ``predict`` uses
    the query images.

    Args:
        root: The training folder.
        labelled: Whether ``root``'s first-level folders are classes.
        val_root: Held-out images, laid out like ``root`` or, with ``val_labels``, flat.
        val_labels: With ``val_root``: a file of ``filename,class`` lines (comma, tab or space
            separated; further fields ignored; a first line naming no class is a header). The
            filename may omit its extension (as in ImageNet's ``LOC_val_solution.csv``); the
            class is a class folder name, or an integer index into the sorted class folders
            (as in the Caffe ``val.txt``). Images of classes outside ``subset`` are dropped.
        subset: A file listing the class folders to keep (one per line).
        val_fraction: Share of ``root`` held out as the query set when there is no
            ``val_root``; ``None`` for 0.05 then, and 0 with ``val_root``.
        image_size: Height and width of the images.
        resize: ``"crop"``: the shorter side resized and the centre cropped (a wide image
            loses its sides); ``"letterbox"``: the whole image, its longer side resized, centred
            on a white square.
        max_pixels: Images larger than this (``height * width``) are skipped as possible
            decompression bombs; raise it to read them.
        num_bank: Most training images in the kNN bank.
        seed: Seed of the held-out split and the bank's draw.
        batch_size: Train batch size (the last incomplete batch is dropped).
        eval_batch_size: Batch size of the bank, validation, test and predict loaders.
        num_workers: Loader worker processes (kept alive between epochs when > 0); ``None``
            for :func:`default_num_workers` of the Trainer's device count.
        decode_on_device: Decode JPEGs on the training device (nvJPEG on a GPU), batched,
            instead of in the loader workers (:mod:`~contrastive.datamodules.device_decode`).
    """

    val_split = test_split = "query"  # one held-out split serves both

    def __init__(
        self,
        root: str | Path,
        labelled: bool = True,
        val_root: str | Path | None = None,
        val_labels: str | Path | None = None,
        subset: str | Path | None = None,
        val_fraction: float | None = None,
        image_size: int = 224,
        resize: Resize = "crop",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        num_bank: int = 10_000,
        seed: int = 0,
        batch_size: int = 256,
        eval_batch_size: int = 256,
        num_workers: int | None = None,
        decode_on_device: bool = False,
    ) -> None:
        super().__init__()
        if val_labels is not None and val_root is None:
            raise ValueError("val_labels needs val_root: the folder the listed files are in")
        if val_labels is not None and not labelled:
            raise ValueError("val_labels needs labelled=True: it names classes of root's folders")
        if subset is not None and not labelled:
            raise ValueError("subset needs labelled=True: it lists class folders of root")
        if val_fraction is not None:
            if not 0.0 <= val_fraction < 1.0:
                raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
            if val_root is not None and val_fraction > 0:
                raise ValueError(
                    f"give val_root ({val_root}) or val_fraction ({val_fraction}), not both"
                )
        for name, value in (
            ("image_size", image_size),
            ("max_pixels", max_pixels),
            ("num_bank", num_bank),
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_workers is not None and num_workers < 0:
            raise ValueError(f"num_workers must be >= 0 or None, got {num_workers}")
        check_resize(resize, image_size)
        if seed < 0:
            raise ValueError(f"seed must be >= 0 (a numpy seed), got {seed}")
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.labelled = labelled
        self.val_root = None if val_root is None else Path(val_root).expanduser()
        self.val_labels = None if val_labels is None else Path(val_labels).expanduser()
        self.subset = None if subset is None else Path(subset).expanduser()
        if val_fraction is None:
            val_fraction = 0.0 if val_root is not None else 0.05
        self.val_fraction = val_fraction
        self.image_size = image_size
        self.resize = resize
        self.max_pixels = max_pixels
        self.num_bank = num_bank
        self.seed = seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.decode_on_device = decode_on_device
        self.tokenizer: Tokenizer | None = None  # image folders carry no captions
        self._classes: tuple[str, ...] = ()
        self._datasets: dict[str, ImageFolderDataset] = {}
        self._repeated = 0  # links to files or folders scanned already, skipped

    # ---- what the method asks -----------------------------------------------------------

    @property
    def num_classes(self) -> dict[str, int]:
        """``{"class": number of classes}``, empty when unlabelled (known after ``setup``)."""
        return {_LABEL: len(self._classes)} if self.labelled and self._classes else {}

    @property
    def class_names(self) -> dict[str, tuple[str, ...]]:
        """``{"class": class folder names}`` in label order, empty when unlabelled."""
        return {_LABEL: self._classes} if self.labelled and self._classes else {}

    # ---- scanning -----------------------------------------------------------------------

    def _scan(self, folder: Path, what: str) -> tuple[list[Path], int]:
        if not folder.is_dir():
            raise ImageFolderError(f"{what} {folder} is not a folder")
        images, ignored, repeated = scan_images(folder)
        self._repeated += repeated
        if not images:
            raise ImageFolderError(
                f"no images in {what} {folder} (looked recursively for "
                f"{', '.join(IMAGE_EXTENSIONS)} files)"
            )
        return images, ignored

    def _class_folders(self, folder: Path) -> list[str]:
        return sorted(
            entry.name
            for entry in os.scandir(folder)
            if entry.is_dir() and not entry.name.startswith(".")
        )

    def _labelled_images(
        self, folder: Path, what: str, keep: dict[str, int]
    ) -> tuple[list[Path], list[int], int]:
        """Images of the classes in ``keep`` (name -> label) under class folders of ``folder``."""
        images, ignored = self._scan(folder, what)
        loose = [p for p in images if p.parent == folder]
        if loose:
            raise ImageFolderError(
                f"{len(loose)} images lie directly in {what} {folder} (e.g. {loose[0].name}), "
                "outside any class folder; move them into class folders or pass labelled=False"
            )
        paths, labels = [], []
        for path in images:
            name = path.relative_to(folder).parts[0]
            if name in keep:
                paths.append(path)
                labels.append(keep[name])
        if not paths:
            raise ImageFolderError(f"no images of the kept classes in {what} {folder}")
        return paths, labels, ignored

    def _val_from_label_file(
        self, all_classes: list[str], keep: dict[str, int]
    ) -> tuple[list[Path], list[int], int]:
        """ImageNet's val layout: a flat ``val_root`` and the ``val_labels`` file."""
        images, ignored = self._scan(self.val_root, "val_root")
        paths, labels, unlisted = read_val_labels(
            self.val_labels, self.val_root, images, self.root, all_classes, keep
        )
        return paths, labels, ignored + unlisted

    def setup(self, stage: str | None = None) -> None:
        """Scan the folders (once; sorted, so every process agrees) and build the datasets."""
        if self._datasets:
            return
        if not self.root.is_dir():
            raise ImageFolderError(f"image folder root {self.root} is not a folder")
        labels: list[int] | None = None
        val_labels: list[int] | None = None
        all_classes: list[str] = []
        keep: dict[str, int] = {}  # class folder name -> label
        if self.labelled:
            all_classes = self._class_folders(self.root)
            if not all_classes:
                raise ImageFolderError(
                    f"no class folders in {self.root}; pass labelled=False to use its images "
                    "without labels"
                )
            self._classes = tuple(classes_to_keep(self.subset, all_classes, self.root))
            keep = {name: i for i, name in enumerate(self._classes)}
            paths, labels, ignored = self._labelled_images(self.root, "root", keep)
            present = {path.relative_to(self.root).parts[0] for path in paths}
            empty = [name for name in self._classes if name not in present]
            if empty:
                raise ImageFolderError(
                    f"{len(empty)} class folders of {self.root} hold no images: "
                    f"{', '.join(empty[:5])}{', ...' if len(empty) > 5 else ''}"
                    + (
                        " (a link to a folder listed already adds none: its images are listed "
                        "once, under the first name)"
                        if self._repeated
                        else ""
                    )
                )
        else:
            paths, ignored = self._scan(self.root, "root")

        rng = np.random.default_rng(self.seed)
        if self.val_root is not None:
            if self.val_labels is not None:
                val_paths, val_labels, val_ignored = self._val_from_label_file(all_classes, keep)
            elif self.labelled:
                val_paths, val_labels, val_ignored = self._labelled_images(
                    self.val_root, "val_root", keep
                )
            else:
                val_paths, val_ignored = self._scan(self.val_root, "val_root")
            ignored += val_ignored
            train = np.arange(len(paths))
        else:
            order = rng.permutation(len(paths))
            num_val = round(self.val_fraction * len(paths))
            held, train = np.sort(order[:num_val]), np.sort(order[num_val:])
            val_paths = [paths[i] for i in held]
            val_labels = None if labels is None else [labels[i] for i in held]
        train_paths = [paths[i] for i in train]
        train_labels = None if labels is None else [labels[i] for i in train]
        if len(train_paths) < self.batch_size:
            raise ImageFolderError(
                f"{len(train_paths)} training images in {self.root}, fewer than batch_size "
                f"({self.batch_size}): the train loader drops incomplete batches"
            )
        # A random draw, not the first images: those would be the first classes only.
        bank = np.sort(rng.permutation(len(train_paths))[: self.num_bank])
        if labels is None:
            bank = bank[:0]  # nothing to vote with

        def dataset(paths: list, labels: list | None) -> ImageFolderDataset:
            return ImageFolderDataset(
                paths, labels, self.image_size, self.max_pixels, self.resize, self.decode_on_device
            )

        self._datasets = {
            "train": dataset(train_paths, train_labels),
            "bank": dataset(
                [train_paths[i] for i in bank],
                None if train_labels is None else [train_labels[i] for i in bank],
            ),
            "query": dataset(val_paths, val_labels),
        }
        classes = f"{len(self._classes)} classes, " if self.labelled else "unlabelled, "
        rank_zero_info(
            f"ImageFolderDataModule: {classes}{len(train_paths)} train, {len(bank)} bank and "
            f"{len(val_paths)} held-out images; {ignored} other files ignored"
            + (
                f"; {self._repeated} links to files or folders listed already skipped"
                if self._repeated
                else ""
            )
        )

    # ---- loaders ------------------------------------------------------------------------

    def loader_workers(self) -> int:
        if self.num_workers is not None:
            return self.num_workers
        return default_num_workers(self.trainer.num_devices if self.trainer is not None else 1)
