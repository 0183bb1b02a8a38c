"""A collection of images and its embeddings: what ``embed``, ``similar`` and the triplets tool
read and write.

``--images`` is a folder (searched recursively), a manifest (one path a line, or one JSON string
a line in a ``.jsonl`` file, as ``embed`` writes its ids), or ``shapes:N``. :func:`embed_source`
embeds every readable image with a model's ``embed`` and skips the rest with their errors.
Ids are written one JSON string a line (:func:`write_ids`), so a file name holding a newline
or a tab is still one id; :func:`read_ids` reads them back.

Images are read as the training data modules read them, by
:func:`~contrastive.datamodules.images.load_image` with the checkpoint's data settings (a
:class:`~contrastive.datamodules.images.Reading`: size, centre crop or letterbox, pixel limit):
transparency composited on white, palettes, 16-bit and CMYK files, EXIF rotation, the same
antialiased resize, so ``embed`` of a file is the trained model's embedding of the tensor it
trained on. A folder is scanned as an image folder is (:func:`contrastive.files.scan_images`:
the project's one list of image extensions, hidden files left out, links followed once).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from contrastive.datamodules.common import Skipped
from contrastive.datamodules.images import Reading
from contrastive.files import IMAGE_EXTENSIONS, scan_images

SHAPES_PREFIX = "shapes:"
DEFAULT_IMAGE_SIZE = 224  # when the checkpoint does not record the training image size


class ExploreError(RuntimeError):
    """A user mistake (missing file, empty folder, existing output), reported as one line."""


class ImageSource:
    """An ordered collection of images: ``ids[i]`` names image ``i``, ``read(i, reading)``
    gives it as a model sees it."""

    def __init__(self, ids: list[str], paths: list[Path] | None = None, shapes=None) -> None:
        self.ids = ids
        self.paths = paths
        self.shapes = shapes  # a ShapesDataset for ``shapes:N``

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, i: int, reading: Reading) -> Tensor | Skipped:
        """Image ``i`` as uint8 ``(3, S, S)`` read with ``reading``, or why it cannot be."""
        if self.shapes is not None:  # rendered at the size asked for when the source was made
            return self.shapes[i]["image"]
        return reading.load(self.paths[i])


def _read_manifest(manifest: Path) -> list[Path]:
    """Paths listed in a manifest: one a line, or (``.jsonl``) one JSON string a line."""
    if manifest.suffix.lower() == ".jsonl":
        try:
            names = read_ids(manifest)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ExploreError(f"--images {manifest}: not one JSON string a line ({err})") from None
    else:
        names = [line.strip() for line in manifest.read_text().splitlines()]
        names = [n for n in names if n and not n.startswith("#")]
    paths = []
    for name in names:
        path = Path(name).expanduser()
        paths.append(path if path.is_absolute() else manifest.parent / path)
    return paths


def image_source(spec: str, image_size: int) -> ImageSource:
    """The images named by ``--images``: a folder (recursive), a manifest, or ``shapes:N``.

    Folders give their image files in walk order (:func:`~contrastive.files.scan_images`: a
    folder's files sorted, then its sub-folders); a manifest gives its lines in order (relative
    paths from the manifest's folder; blank and ``#`` lines ignored; a ``.jsonl`` manifest, such
    as ``embed``'s ids file, holds one JSON string a line). A file listed twice is kept once, so
    no pair is an image with itself.
    """
    if spec.startswith(SHAPES_PREFIX):
        from contrastive.datamodules.shapes import ShapesDataset

        n = spec[len(SHAPES_PREFIX) :]
        if not n.isdigit() or int(n) < 1:
            raise ExploreError(f"--images {spec}: expected shapes:N with N >= 1, e.g. shapes:512")
        shapes = ShapesDataset(int(n), image_size, split="test")
        return ImageSource([f"shapes:test:{i}" for i in range(int(n))], shapes=shapes)
    root = Path(spec).expanduser()
    if root.is_dir():
        candidates = scan_images(root).images
        where = f"folder {spec}"
    elif root.is_file():
        is_image = root.name.lower().endswith(IMAGE_EXTENSIONS)
        candidates = [root] if is_image else _read_manifest(root)
        where = f"manifest {spec}"
    else:
        raise ExploreError(f"--images {spec}: no such folder or manifest file")
    paths, seen = [], set()
    for path in candidates:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            paths.append(path)
    if not paths:
        raise ExploreError(
            f"--images: no images in {where} (extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    return ImageSource([str(p) for p in paths], paths=paths)


class _Decoded(Dataset):
    """Image ``i`` read with ``reading``: ``(i, uint8 (3, S, S) or None, error, digest)``; the
    digest hashes the pixels, so identical images are known without comparing them."""

    def __init__(self, source: ImageSource, reading: Reading) -> None:
        self.source = source
        self.reading = reading

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[int, Tensor | None, str, str]:
        image = self.source.read(i, self.reading)
        if isinstance(image, Skipped):
            return i, None, image.reason, ""
        digest = hashlib.blake2b(image.numpy().tobytes(), digest_size=16).hexdigest()
        return i, image, "", digest


def _collate(items: list[tuple[int, Tensor | None, str, str]]) -> tuple:
    good = [(i, image, digest) for i, image, _, digest in items if image is not None]
    failed = [(i, error) for i, image, error, _ in items if image is None]
    images = torch.stack([image for _, image, _ in good]) if good else torch.empty(0, 3, 1, 1)
    index, digests = [i for i, _, _ in good], [d for _, _, d in good]
    return index, images, failed, digests  # images: (B, 3, S, S) uint8


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class Embeddings:
    """Embeddings of the readable images of a collection, in its order."""

    z: Tensor  # (N, D) float32, on the CPU
    ids: list[str]
    rows: list[int]  # index of each row in the source
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, error)
    digests: list[str] = field(default_factory=list)  # of each row's pixels, as embedded

    def duplicates(self) -> list[list[int]]:
        """Rows whose images are identical as embedded (same pixels, so cosine 1): groups of
        two or more, each in row order, the groups in order of their first row."""
        groups: dict[str, list[int]] = {}
        for row, digest in enumerate(self.digests):
            groups.setdefault(digest, []).append(row)
        return [rows for rows in groups.values() if len(rows) > 1]


def embed_source(
    model,
    source: ImageSource,
    reading: Reading,
    device: torch.device,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = True,
) -> Embeddings:
    """Embed every readable image of ``source`` with ``model.embed`` (eval, inference mode),
    each read with ``reading`` (its ``image_size`` set)."""
    if reading.image_size is None:
        raise ValueError("embed_source needs a reading with an image_size")
    loader = DataLoader(
        _Decoded(source, reading),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )
    bar = _progress(len(source), "embed") if progress else None
    chunks, rows, skipped, digests = [], [], [], []
    model.eval()
    with torch.inference_mode():
        for index, images, failed, batch_digests in loader:
            skipped += [(source.ids[i], error) for i, error in failed]
            if index:
                z = model.embed(images.to(device, non_blocking=True))  # (B, D)
                chunks.append(z.float().cpu())
                rows += index
                digests += batch_digests
            if bar is not None:
                bar.update(len(index) + len(failed))
    if bar is not None:
        bar.close()
    if not rows:
        raise ExploreError(f"none of the {len(source)} images could be read: {_first(skipped)}")
    z = torch.cat(chunks)  # (N, D)
    return Embeddings(z, [source.ids[i] for i in rows], rows, skipped, digests)


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="img", disable=None)  # None: off when not a TTY


def _first(skipped: list[tuple[str, str]], n: int = 3) -> str:
    names = ", ".join(f"{i} ({error})" for i, error in skipped[:n])
    return names + (f", ... and {len(skipped) - n} more" if len(skipped) > n else "")


def write_ids(path: Path, ids: list[str]) -> None:
    """Write ``ids`` one JSON string a line: unambiguous whatever characters a name holds."""
    path.write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in ids))


def read_ids(path: Path) -> list[str]:
    """The ids :func:`write_ids` wrote, in order."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
