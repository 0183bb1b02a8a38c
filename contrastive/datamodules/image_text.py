"""Image-text pairs for CLIP: a CSV/TSV of (image path, caption), or webdataset tar shards.

**Tables.** One row per pair; image paths relative to the table's folder (or absolute).
Column names and the separator are settings (``.tsv`` files default to tabs).

**Shards.** webdataset's layout: ``.tar`` files whose members ``KEY.jpg`` (or png, webp, ...)
and ``KEY.txt`` make one sample. Shards stream (local files, ``http(s)://`` URLs, or
``pipe:COMMAND``), so a dataset can exceed one disk. Brace ranges expand
(``shards/{000000..000099}.tar``). Shards are split across ranks, then across loader workers;
with fewer shards than readers, samples are split instead (every reader scans the shards and
keeps its share), so no sample is read twice in an epoch either way.

**Bad pairs.** A missing or unreadable image or an empty caption is skipped and counted (the
method warns once per epoch, naming the first few); a broken shard is skipped from the point
where it breaks.

Captions are tokenized in the loader workers with the method's tokenizer (see
:mod:`contrastive.datamodules.common`).
"""

from __future__ import annotations

import glob
import io
import itertools
import os
import re
import subprocess
import tarfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning
import numpy as np
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from contrastive import distributed
from contrastive.datamodules.common import Collate, DataError, Skipped, Tokenizer
from contrastive.datamodules.images import DEFAULT_MAX_PIXELS, decode_image, load_image
from contrastive.files import TableError, table_rows

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")


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
    """

    def __init__(
        self,
        rows: list[tuple[str, str, str]],
        image_size: int = 224,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.rows, self.image_size, self.max_pixels = rows, image_size, max_pixels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict | Skipped:
        path, caption, where = self.rows[index]
        if not caption:
            return Skipped(where, "empty caption")
        if not path:
            return Skipped(where, "no image path")
        image = load_image(path, self.image_size, self.max_pixels)
        if isinstance(image, Skipped):
            return image
        return {"image": image, "caption": caption, "index": index, "path": path}


# ----------------------------------------------------------------------------- shards


def expand_shards(spec: str | list[str]) -> list[str]:
    """Shard URLs from a pattern, a comma-separated string or a list.

    ``{000..099}`` brace ranges expand (zero padding kept); a local pattern with ``*`` is
    globbed (sorted). ``http(s)://`` and ``pipe:`` entries are kept as they are.
    """
    entries = spec if isinstance(spec, list) else [s for s in spec.split(",") if s.strip()]
    out = []
    for entry in entries:
        for url in _expand_braces(entry.strip()):
            if "*" in url and "://" not in url and not url.startswith("pipe:"):
                out.extend(sorted(glob.glob(url)))
            else:
                out.append(url)
    return out


def _expand_braces(pattern: str) -> list[str]:
    match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if match is None:
        return [pattern]
    first, last = match.groups()
    width = len(first)
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [
        f"{head}{i:0{width}d}{rest}"
        for i in range(int(first), int(last) + 1)
        for rest in _expand_braces(tail)
    ]


def split_plan(
    num_shards: int, rank: int, world: int, worker: int, workers: int
) -> tuple[list[int], list[tuple[int, int]]]:
    """Which shards this reader opens, and which of their samples it keeps.

    Shards are dealt round-robin to ranks, then to workers, while there are at least as many
    as readers at that level; below that, every reader of the level scans the same shards
    and keeps samples ``i`` with ``i % parts == part`` (counted among the samples that
    passed the levels above).

    Returns:
        ``(shard indices, [(part, parts), ...])``: the sample filters to apply in order.
    """
    shards = list(range(num_shards))
    filters: list[tuple[int, int]] = []
    for part, parts in ((rank, world), (worker, workers)):
        if parts == 1:
            continue
        if not filters and len(shards) >= parts:
            shards = shards[part::parts]
        else:
            filters.append((part, parts))
    return shards, filters


def _open_stream(url: str):
    if url.startswith("pipe:"):
        return subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE).stdout
    if re.match(r"https?://", url):
        return urllib.request.urlopen(url, timeout=60)  # noqa: S310 (the user's own URL)
    return open(url, "rb")


def iterate_tar(url: str) -> Iterator[tuple[str, dict[str, bytes]] | Skipped]:
    """``(key, {extension: bytes})`` per sample of one tar shard, in stream order.

    A member ``dir/KEY.EXT`` belongs to sample ``dir/KEY`` (the basename up to its first dot);
    members of a sample are consecutive, as webdataset writes them. A shard that cannot be
    opened or breaks midway yields one :class:`Skipped` and ends.
    """
    key, sample = None, {}
    try:
        with _open_stream(url) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                stem, _, ext = base.partition(".")
                member_key = f"{folder}/{stem}" if folder else stem
                if member_key != key and key is not None:
                    yield key, sample
                    sample = {}
                key = member_key
                sample[ext.lower()] = tar.extractfile(member).read()
    except (OSError, tarfile.TarError, EOFError) as err:
        yield Skipped(url, f"broken shard ({type(err).__name__})")
    if key is not None and sample:
        yield key, sample


class TarShards(IterableDataset):
    """webdataset-style shards of (image, caption) samples, split across ranks and workers.

    Args:
        urls: shard URLs (see :func:`expand_shards`).
        image_size: images are resized (shorter side) and centre-cropped to this.
        caption_key: the extension of the caption member (``txt``).
        max_pixels: larger images are skipped as possible decompression bombs.
        shuffle: shuffle the shard order each epoch (the same on every rank) and samples in a
            buffer of ``shuffle_buffer``.
        shuffle_buffer: samples held for shuffling.
        seed: seed of the shuffles (combined with the epoch).
        samples_per_epoch: make an epoch exactly this many samples per rank, cycling through
            this reader's shards as needed, so every rank yields the same number of batches
            (needed under DDP, where one rank running out first would stall the others).
            ``None``: one pass over the shards.
    """

    def __init__(
        self,
        urls: list[str],
        image_size: int = 224,
        caption_key: str = "txt",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        shuffle: bool = False,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        samples_per_epoch: int | None = None,
    ) -> None:
        if not urls:
            raise DataError("no shards: the pattern matched no file")
        self.urls, self.image_size, self.caption_key = list(urls), image_size, caption_key
        self.max_pixels, self.shuffle, self.shuffle_buffer = max_pixels, shuffle, shuffle_buffer
        self.seed, self.samples_per_epoch = seed, samples_per_epoch
        self.epoch = 0

    def __len__(self) -> int:
        if self.samples_per_epoch is None:
            raise TypeError("TarShards has a length only with samples_per_epoch")
        return self.samples_per_epoch

    def __iter__(self) -> Iterator[dict | Skipped]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        order = list(range(len(self.urls)))
        if self.shuffle:  # the same permutation on every rank and worker: no duplicates
            np.random.default_rng([self.seed, self.epoch]).shuffle(order)
        shard_ids, filters = split_plan(
            len(order), distributed.rank(), distributed.world_size(), worker, workers
        )
        mine = [self.urls[order[i]] for i in shard_ids]
        samples = self._samples(mine, filters)
        if self.samples_per_epoch is not None:
            quota = self.samples_per_epoch // workers + (worker < self.samples_per_epoch % workers)
            samples = itertools.islice(_cycle(lambda: self._samples(mine, filters)), quota)
        if self.shuffle:
            samples = _buffer_shuffle(samples, self.shuffle_buffer, [self.seed, self.epoch, worker])
        self.epoch += 1
        yield from samples

    def _samples(self, urls: list[str], filters: list[tuple[int, int]]) -> Iterator:
        counters = [0] * len(filters)
        for url in urls:
            for item in iterate_tar(url):
                if isinstance(item, Skipped):
                    yield item
                    continue
                keep = True
                for i, (part, parts) in enumerate(filters):
                    if not keep:
                        break
                    keep = counters[i] % parts == part
                    counters[i] += 1
                if keep:
                    yield self._decode(url, *item)

    def _decode(self, url: str, key: str, sample: dict[str, bytes]) -> dict | Skipped:
        where = f"{url}:{key}"
        caption = sample.get(self.caption_key, b"").decode("utf-8", errors="replace").strip()
        if not caption:
            return Skipped(where, "empty caption")
        data = next((sample[e] for e in IMAGE_EXTENSIONS if e in sample), None)
        if data is None:
            return Skipped(where, "missing image")
        image = decode_image(data, self.image_size, self.max_pixels, where)
        if isinstance(image, Skipped):
            return image
        return {"image": image, "caption": caption, "key": key}


def _cycle(make: Callable[[], Iterator]) -> Iterator:
    """Passes of ``make()`` one after another, forever (stops if a pass yields nothing)."""
    while True:
        empty = True
        for item in make():
            empty = False
            yield item
        if empty:
            return


def _buffer_shuffle(items: Iterator, size: int, seed: list[int]) -> Iterator:
    rng = np.random.default_rng(seed)
    buffer = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            yield buffer.pop(int(rng.integers(len(buffer))))
    rng.shuffle(buffer)
    yield from buffer


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
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train and not isinstance(dataset, IterableDataset),
            drop_last=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=Collate(self.tokenizer),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val") if "val" in self._datasets else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


# A readable tar writer for tests, demos and users packing their own pairs.
def write_shard(path: str | os.PathLike, samples: list[tuple[str, bytes, str]]) -> None:
    """Write ``(key, jpeg bytes, caption)`` samples as a webdataset shard at ``path``."""
    with tarfile.open(path, "w") as tar:
        for key, image, caption in samples:
            for ext, data in (("jpg", image), ("txt", caption.encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
