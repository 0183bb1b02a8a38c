"""A collection of images and its embeddings: what ``embed``, ``similar`` and the triplets tool
read and write.

``--images`` is a folder (searched recursively), a manifest (one path a line, or one JSON string
a line in a ``.jsonl`` file, as ``embed`` writes its ids), or ``shapes:N``. :func:`embed_source`
embeds every readable image with a model's ``embed`` and skips the rest with their errors.
Ids are written one JSON string a line (:func:`write_ids`), so a file name holding a newline
or a tab is still one id; :func:`read_ids` reads them back.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
SHAPES_PREFIX = "shapes:"
DEFAULT_IMAGE_SIZE = 224  # when the checkpoint does not record the training image size


class ExploreError(RuntimeError):
    """A user mistake (missing file, empty folder, existing output), reported as one line."""


class ImageSource:
    """An ordered collection of images: ``ids[i]`` names image ``i``, ``load(i)`` opens it."""

    def __init__(self, ids: list[str], paths: list[Path] | None = None, shapes=None) -> None:
        self.ids = ids
        self.paths = paths
        self.shapes = shapes  # a ShapesDataset for ``shapes:N``

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, i: int) -> Image.Image:
        """Image ``i`` as an RGB PIL image; raises on an unreadable file."""
        if self.shapes is not None:
            return Image.fromarray(self.shapes[i]["image"].permute(1, 2, 0).numpy())
        with Image.open(self.paths[i]) as image:
            return image.convert("RGB")  # decodes fully, so the file can close


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

    Folders give their files with an image extension in sorted order; a manifest gives its
    lines in order (relative paths from the manifest's folder; blank and ``#`` lines ignored;
    a ``.jsonl`` manifest, such as ``embed``'s ids file, holds one JSON string a line).
    A file listed twice is kept once, so no pair is an image with itself.
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
        candidates = sorted(
            p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        where = f"folder {spec}"
    elif root.is_file():
        is_image = root.suffix.lower() in IMAGE_EXTENSIONS
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
        raise ExploreError(f"--images: no images in {where} (extensions {IMAGE_EXTENSIONS})")
    return ImageSource([str(p) for p in paths], paths=paths)


class _Decoded(Dataset):
    """Decodes image ``i`` to uint8 ``(3, S, S)`` (shorter side resized, centre crop)."""

    def __init__(self, source: ImageSource, image_size: int) -> None:
        self.source = source
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[int, Tensor | None, str]:
        try:
            image = self.source.load(i)
            if image.size != (self.image_size, self.image_size):
                size = (self.image_size, self.image_size)
                image = ImageOps.fit(image, size, Image.Resampling.BICUBIC)
            array = np.asarray(image, dtype=np.uint8)  # (H, W, 3)
            return i, torch.from_numpy(array.copy()).permute(2, 0, 1), ""
        except Exception as err:  # any undecodable file is skipped and reported, never fatal
            return i, None, f"{type(err).__name__}: {err}"


def _collate(items: list[tuple[int, Tensor | None, str]]) -> tuple[list[int], Tensor, list]:
    good = [(i, image) for i, image, _ in items if image is not None]
    failed = [(i, error) for i, image, error in items if image is None]
    images = torch.stack([image for _, image in good]) if good else torch.empty(0, 3, 1, 1)
    return [i for i, _ in good], images, failed  # images: (B, 3, S, S) uint8


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


def embed_source(
    model,
    source: ImageSource,
    image_size: int,
    device: torch.device,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = True,
) -> Embeddings:
    """Embed every readable image of ``source`` with ``model.embed`` (eval, inference mode)."""
    loader = DataLoader(
        _Decoded(source, image_size),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )
    bar = _progress(len(source), "embed") if progress else None
    chunks, rows, skipped = [], [], []
    model.eval()
    with torch.inference_mode():
        for index, images, failed in loader:
            skipped += [(source.ids[i], error) for i, error in failed]
            if index:
                z = model.embed(images.to(device, non_blocking=True))  # (B, D)
                chunks.append(z.float().cpu())
                rows += index
            if bar is not None:
                bar.update(len(index) + len(failed))
    if bar is not None:
        bar.close()
    if not rows:
        raise ExploreError(f"none of the {len(source)} images could be read: {_first(skipped)}")
    z = torch.cat(chunks)  # (N, D)
    return Embeddings(z, [source.ids[i] for i in rows], rows, skipped)


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
