"""Image-text pairs for CLIP, or images alone for the image methods: a CSV/TSV of (image path,
caption), or webdataset tar shards.

**Tables.** One row per pair; image paths relative to the table's folder (or absolute).
Column names and the separator are settings (``.tsv`` files default to tabs).

**Shards** (:mod:`contrastive.datamodules.shards`): ``.tar`` files whose members ``KEY.jpg``
(or png, webp, ...) and ``KEY.txt`` make one sample, streamed from local files, ``http(s)://``
URLs (retried, resumed where a connection drops) or ``pipe:COMMAND`` (its exit status checked).
Shards are split across ranks, then across loader workers; with fewer shards than readers,
samples are split instead (every reader scans the shards and keeps its share), so no sample is
read twice in an epoch either way.

**Captions** are read only when the method reads text (it gives the data module a tokenizer,
as CLIP does). For SimCLR, BYOL and the other image methods, a table's captions and a shard's
caption members are not read: image-only shards, and tables with empty captions, are data.

**Bad pairs.** A missing or unreadable image or (when captions are read) an empty caption is
skipped and counted (the method warns once per epoch, naming the first few); a broken shard is
skipped from the point where it breaks.

Captions are tokenized in the loader workers with the method's tokenizer (see
:mod:`contrastive.datamodules.common`).
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning
from torch.utils.data import DataLoader, Dataset, IterableDataset

from contrastive import distributed
from contrastive.datamodules.common import Collate, DataError, EvaluationData, Skipped, Tokenizer
from contrastive.datamodules.images import DEFAULT_MAX_PIXELS, load_image
from contrastive.datamodules.shards import TarShards, expand_shards
from contrastive.files import TableError, table_rows

# ----------------------------------------------------------------------------- tables


def read_caption_table(
    path: str | os.PathLike,
    image_column: str = "image",
    caption_column: str = "caption",
    separator: str | None = None,
) -> list[tuple[str, str, str]]:
    """``(image path, caption, "table.csv:LINE")`` for each row of a CSV/TSV file.

    Rows are kept as they are (bad ones are skipped when read, and counted then). The file is
    UTF-8, a byte-order mark allowed (:func:`contrastive.files.table_rows`).

    Raises:
        DataError: the file is missing, empty or not UTF-8 (the message gives the offset of the
            first bad byte), or lacks a named column (the message lists the columns it has).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"caption table not found: {path}")
    hint = "; set image_column / caption_column / separator"
    rows = []
    try:
        for line, row in table_rows(path, separator, (image_column, caption_column), hint):
            image = (row.get(image_column) or "").strip()
            resolved = str(path.parent / image) if image else ""
            rows.append((resolved, (row.get(caption_column) or "").strip(), f"{path}:{line}"))
    except TableError as err:
        raise DataError(str(err)) from None
    if not rows:
        raise DataError(f"{path}: no rows after the header")
    return rows


class CaptionTable(Dataset):
    """The pairs of a caption table; a bad pair is returned as a :class:`Skipped`.

    Args:
        rows: from :func:`read_caption_table`.
        image_size: images are resized (shorter side) and centre-cropped to this.
        max_pixels: larger images are skipped as possible decompression bombs.
        captions: read each row's caption (an empty one is skipped); ``False`` for image
            methods: items are images only.
    """

    def __init__(
        self,
        rows: list[tuple[str, str, str]],
        image_size: int = 224,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        captions: bool = True,
    ) -> None:
        self.rows, self.image_size, self.max_pixels = rows, image_size, max_pixels
        self.captions = captions

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict | Skipped:
        path, caption, where = self.rows[index]
        if self.captions and not caption:
            return Skipped(where, "empty caption")
        if not path:
            return Skipped(where, "no image path")
        image = load_image(path, self.image_size, self.max_pixels)
        if isinstance(image, Skipped):
            return image
        item = {"image": image, "index": index, "path": path}
        return {**item, "caption": caption} if self.captions else item


# ----------------------------------------------------------------------------- data module


class ImageTextDataModule(lightning.LightningDataModule):
    """(image, caption) pairs from caption tables or webdataset shards.

    Each split is a ``.csv``/``.tsv`` table or a shard pattern (anything ending in ``.tar``, a
    brace range, or a list). Validation and test give one loader (the query set: retrieval,
    and the embedding metrics); there are no class labels, so no kNN and no zero-shot.

    Args:
        train: the training pairs.
        val: validation pairs; ``None`` for none.
        test: test pairs; ``None`` for none.
        image_column: the table's image path column.
        caption_column: the table's caption column.
        separator: the table's separator; tab for ``.tsv``, comma otherwise.
        caption_key: the caption member's extension in shards.
        image_size: images are resized (shorter side) and centre-cropped to this.
        max_pixels: larger images are skipped as possible decompression bombs.
        batch_size: train batch size (the last incomplete batch is dropped).
        eval_batch_size: batch size of validation and test.
        num_workers: loader worker processes (kept alive between epochs).
        shuffle_buffer: samples held for shuffling train shards.
        samples_per_epoch: train samples per rank per epoch for shards (required under DDP,
            so every rank runs the same number of steps; see :class:`TarShards`).
        seed: seed of the shuffles.
    """

    def __init__(
        self,
        train: str | list[str],
        val: str | list[str] | None = None,
        test: str | list[str] | None = None,
        image_column: str = "image",
        caption_column: str = "caption",
        separator: str | None = None,
        caption_key: str = "txt",
        image_size: int = 224,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        batch_size: int = 256,
        eval_batch_size: int = 256,
        num_workers: int = 4,
        shuffle_buffer: int = 1000,
        samples_per_epoch: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters()
        self.sources = {"train": train, "val": val, "test": test}
        self.table_args = {
            "image_column": image_column,
            "caption_column": caption_column,
            "separator": separator,
        }
        self.caption_key, self.image_size, self.max_pixels = caption_key, image_size, max_pixels
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.shuffle_buffer = num_workers, shuffle_buffer
        self.samples_per_epoch, self.seed = samples_per_epoch, seed
        self.tokenizer: Tokenizer | None = None  # set by methods that read captions
        self._datasets: dict[str, Dataset] = {}

    def setup(self, stage: str | None = None) -> None:
        for split, source in self.sources.items():
            if source is not None and split not in self._datasets:
                self._datasets[split] = self._dataset(source, train=split == "train")
        if self.samples_per_epoch is None and distributed.is_distributed():
            if isinstance(self._datasets["train"], TarShards):
                raise DataError("training on shards under DDP needs data.samples_per_epoch")

    def _dataset(self, source: str | list[str], train: bool) -> Dataset:
        if isinstance(source, str) and source.lower().endswith((".csv", ".tsv")):
            rows = read_caption_table(source, **self.table_args)
            return CaptionTable(rows, self.image_size, self.max_pixels)
        return TarShards(
            expand_shards(source),
            image_size=self.image_size,
            caption_key=self.caption_key,
            max_pixels=self.max_pixels,
            shuffle=train,
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
            samples_per_epoch=self.samples_per_epoch if train else None,
        )

    def _loader(self, split: str) -> DataLoader:
        if split not in self._datasets:
            raise DataError(f"no {split} data: set data.{split}")
        dataset, train = self._datasets[split], split == "train"
        # Known only now: the method hands over its tokenizer after setup, if it reads text.
        dataset.captions = self.tokenizer is not None
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train and not isinstance(dataset, IterableDataset),
            drop_last=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=Collate(self.tokenizer),
        )

    def evaluation_data(self) -> EvaluationData:
        """One evaluation loader of image-caption pairs, no labels: retrieval only."""
        return EvaluationData(has_bank=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val") if "val" in self._datasets else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
