"""webdataset tar shards, streamed: where they are read from, how they are split across ranks
and workers, and their samples.

A shard is a ``.tar`` whose members ``KEY.jpg`` (or png, webp, ...: any of
:data:`~contrastive.files.IMAGE_EXTENSIONS`) and ``KEY.txt`` make one sample. Shards stream
from local files, ``http(s)://`` URLs or ``pipe:COMMAND`` (the command's standard output), so a
dataset can exceed one disk; brace ranges expand (``shards/{000000..000099}.tar``).

- **http(s)** reads go through :class:`~contrastive.tools.stream.ResumableStream`: a failed
  request (timeouts, resets, 408/425/429/5xx) is retried with backoff, and a connection that
  drops mid-shard is reopened at the byte it broke at, so a long stream survives a flaky
  network. Each loader worker keeps one connection per server across its shards.
- **pipe:** the command's exit status is checked when its output ends: a command that fails
  (``curl -f`` on a 404, a missing ``aws``) is one skipped entry naming the command and its
  status, not a silent short shard.
- **Captions** are read when the method reads text (``captions=True``): a sample without one is
  skipped as ``"empty caption"``. Image methods (SimCLR, BYOL, ...) read image-only shards: a
  sample's caption, present or not, is not read.

A shard that cannot be opened or breaks midway yields one :class:`Skipped` and ends; its
samples before the break are kept.
"""

from __future__ import annotations

import glob
import io
import itertools
import re
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from contrastive import distributed
from contrastive.datamodules.common import DataError, Skipped
from contrastive.datamodules.images import DEFAULT_MAX_PIXELS, decode_image
from contrastive.files import IMAGE_EXTENSIONS
from contrastive.tools.fetch import Client, FetchError
from contrastive.tools.stream import ResumableStream

# Member extensions that hold the image, in order of preference (".jpg" -> "jpg").
_IMAGE_MEMBERS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
USER_AGENT = "contrastive-shards/0.1 (Python http.client)"
_EXIT_GRACE = 2.0  # seconds a pipe: command may take to exit after its output broke off


class ShardError(Exception):
    """A shard's source failed in a way the tar reader cannot see (a command's exit status)."""


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


@contextmanager
def open_shard(url: str, client: Client | None = None) -> Iterator[BinaryIO]:
    """A shard's bytes: a local file, an http(s) stream with retries (through ``client``, or
    a client of its own), or a command's output.

    Raises:
        ShardError: A ``pipe:`` command that failed (the message names it and its status).
        FetchError: An http(s) shard that could not be read, after the client's retries.
        OSError: A local file that cannot be read.
    """
    if url.startswith("pipe:"):
        with _command_output(url[len("pipe:") :]) as stream:
            yield stream
    elif re.match(r"https?://", url):
        own = Client(USER_AGENT, timeout=60) if client is None else None
        try:
            with io.BufferedReader(ResumableStream(client or own, url)) as stream:
                yield stream
        finally:
            if own is not None:
                own.close()
    else:
        with open(url, "rb") as stream:
            yield stream


@contextmanager
def _command_output(command: str) -> Iterator[BinaryIO]:
    """The standard output of ``command`` (a shell line), its exit status checked.

    Read to its end, the rest of the output (a tar's padding) is drained so the command does
    not fail writing it, and a failing status raises :class:`ShardError`. When the reader
    fails first (no tar, or a broken one), a command that exits with a failure within
    ``_EXIT_GRACE`` seconds is the cause and is reported the same way; else it is killed. A
    reader that stops early (closed, Ctrl-C) kills it.
    """
    proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE)
    try:
        try:
            yield proc.stdout
            while proc.stdout.read(1 << 16):
                pass
        except (GeneratorExit, KeyboardInterrupt):
            proc.kill()
            raise
        except BaseException:
            try:
                status = proc.wait(timeout=_EXIT_GRACE)
            except subprocess.TimeoutExpired:
                status = None
            if not status:  # still running, or it succeeded: the data was bad
                proc.kill()
                raise
            raise ShardError(_failed(command, status)) from None
        status = proc.wait()
        if status != 0:
            raise ShardError(_failed(command, status))
    finally:
        proc.stdout.close()
        proc.wait()


def _failed(command: str, status: int) -> str:
    how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
    return f"command {command!r} {how}"


def iterate_tar(
    url: str, client: Client | None = None
) -> Iterator[tuple[str, dict[str, bytes]] | Skipped]:
    """``(key, {extension: bytes})`` per sample of one tar shard, in stream order.

    A member ``dir/KEY.EXT`` belongs to sample ``dir/KEY`` (the basename up to its first dot);
    members of a sample are consecutive, as webdataset writes them. A shard that cannot be
    opened or breaks midway, or a ``pipe:`` command that fails, yields one :class:`Skipped`
    and ends.
    """
    key, sample = None, {}
    try:
        with open_shard(url, client) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
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
    except ShardError as err:
        yield Skipped(url, str(err))
    except FetchError as err:
        yield Skipped(url, f"broken shard ({err.reason})")
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
        captions: read each sample's caption (a sample without one is skipped); ``False``
            for image methods: samples are images only, captioned or not.
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
        captions: bool = True,
    ) -> None:
        if not urls:
            raise DataError("no shards: the pattern matched no file")
        self.urls, self.image_size, self.caption_key = list(urls), image_size, caption_key
        self.max_pixels, self.shuffle, self.shuffle_buffer = max_pixels, shuffle, shuffle_buffer
        self.seed, self.samples_per_epoch = seed, samples_per_epoch
        self.captions = captions
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
        client = Client(USER_AGENT, timeout=60)  # this reader's connections, kept across shards
        samples = self._samples(mine, filters, client)
        if self.samples_per_epoch is not None:
            quota = self.samples_per_epoch // workers + (worker < self.samples_per_epoch % workers)
            cycle = _cycle(lambda: self._samples(mine, filters, client))
            samples = itertools.islice(cycle, quota)
        if self.shuffle:
            samples = _buffer_shuffle(samples, self.shuffle_buffer, [self.seed, self.epoch, worker])
        self.epoch += 1
        try:
            yield from samples
        finally:
            client.close()

    def _samples(self, urls: list[str], filters: list[tuple[int, int]], client: Client) -> Iterator:
        counters = [0] * len(filters)
        for url in urls:
            for item in iterate_tar(url, client):
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
        item: dict = {"key": key}
        if self.captions:
            caption = sample.get(self.caption_key, b"").decode("utf-8", errors="replace").strip()
            if not caption:
                return Skipped(where, "empty caption")
            item["caption"] = caption
        data = next((sample[e] for e in _IMAGE_MEMBERS if e in sample), None)
        if data is None:
            return Skipped(where, "missing image")
        image = decode_image(data, self.image_size, self.max_pixels, where)
        if isinstance(image, Skipped):
            return image
        return {"image": image, **item}


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


# A readable tar writer for tests, demos and users packing their own pairs.
def write_shard(path: str, samples: list[tuple[str, bytes, str | None]]) -> None:
    """Write ``(key, jpeg bytes, caption)`` samples as a webdataset shard at ``path``; a
    ``None`` caption writes the image alone."""
    with tarfile.open(path, "w") as tar:
        for key, image, caption in samples:
            members = [("jpg", image)] + ([] if caption is None else [("txt", caption.encode())])
            for ext, data in members:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
