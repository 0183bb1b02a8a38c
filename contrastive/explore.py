"""Looking at a trained embedding: ``contrastive embed`` and ``contrastive similar``.

``contrastive embed --ckpt RUN.ckpt --images DIR|MANIFEST|shapes:N --out emb.npy`` writes the
``(N, D)`` float32 embeddings and ``emb.ids.txt`` (one id per row). ``contrastive similar``
embeds the same way, then draws the most similar pairs of the collection (or the nearest
neighbours of ``--query IMG``) as a labelled PNG grid and prints them as a table. The pair
search is exact and chunked (:func:`top_pairs`): memory is ``O(chunk_size x N)``, never
``N x N``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from contrastive.encoder import Encoder

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
SHAPES_PREFIX = "shapes:"
DEFAULT_IMAGE_SIZE = 224  # when the checkpoint does not record the training image size


class ExploreError(RuntimeError):
    """A user mistake (missing file, empty folder, existing output), reported as one line."""


# ---- the collection of images -------------------------------------------------------------


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
    paths = []
    for line in manifest.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            path = Path(line).expanduser()
            paths.append(path if path.is_absolute() else manifest.parent / path)
    return paths


def image_source(spec: str, image_size: int) -> ImageSource:
    """The images named by ``--images``: a folder (recursive), a manifest, or ``shapes:N``.

    Folders give their files with an image extension in sorted order; a manifest gives its
    lines in order (relative paths from the manifest's folder; blank and ``#`` lines ignored).
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


# ---- the model ----------------------------------------------------------------------------


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_method(ckpt: str | Path, device: torch.device):
    """The method saved in ``ckpt``, in eval mode on ``device``, and its training image size.

    Returns:
        ``(model, image_size)``; ``image_size`` is ``None`` when the checkpoint has no data
        module hyper-parameter ``image_size``.
    """
    path = Path(ckpt).expanduser()
    if not path.is_file():
        raise ExploreError(f"checkpoint not found: {ckpt}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        class_path = state["hyper_parameters"]["_class_path"]
    except Exception as err:
        raise ExploreError(f"{ckpt} is not a contrastive checkpoint: {err}") from None
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ExploreError(f"{ckpt}: cannot import the method {class_path}: {err}") from None
    model = cls.load_from_checkpoint(path, map_location=device, weights_only=True)
    image_size = (state.get("datamodule_hyper_parameters") or {}).get("image_size")
    return model.eval().to(device), image_size


def load_compare_model(spec: str, pretrained: str | None, device: torch.device):
    """The ``--compare-ckpt`` model: a checkpoint, or a backbone from the registry
    (``open_clip:ViT-B-32`` with ``--compare-pretrained laion2b_s34b_b79k``, ``timm:NAME``).

    Returns:
        ``(model with .embed, image size or None)``.
    """
    if Path(spec).expanduser().is_file() or spec.endswith(".ckpt"):
        return load_method(spec, device)
    from contrastive.backbones import BackboneWeightsError, UnknownBackboneError, create_backbone

    weights: bool | str = {None: False, "true": True}.get(pretrained, pretrained)
    try:
        model = Encoder(create_backbone(spec, pretrained=weights))
    except (UnknownBackboneError, BackboneWeightsError) as err:
        raise ExploreError(f"--compare-ckpt {spec}: {err}") from None
    return model.eval().to(device), model.image_size


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


# ---- nearest pairs and neighbours ---------------------------------------------------------


def top_pairs(z: Tensor, k: int, chunk_size: int = 4096) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` pairs ``i < j`` with the largest dot product ``z[i] . z[j]``, exactly.

    Rows are scored ``chunk_size`` at a time against the rows after them, keeping a running
    top-k, so memory is ``O(chunk_size x N)``. Pass L2-normalised ``z`` for cosine similarity.

    Args:
        z: ``(N, D)`` embeddings.
        k: number of pairs (at most ``N (N - 1) / 2`` are returned).
        chunk_size: rows scored at once.

    Returns:
        ``(scores, i, j)``, each ``(k,)``, best first.
    """
    n = z.shape[0]
    best = torch.empty(0, dtype=z.dtype, device=z.device)
    best_i = torch.empty(0, dtype=torch.long, device=z.device)
    best_j = torch.empty(0, dtype=torch.long, device=z.device)
    for start in range(0, n - 1, chunk_size):
        stop = min(start + chunk_size, n)
        sims = z[start:stop] @ z[start:].T  # (c, N - start): rows against the rows from start
        row = torch.arange(start, stop, device=z.device)[:, None]
        col = torch.arange(start, n, device=z.device)[None, :]
        sims = sims.masked_fill(col <= row, float("-inf"))  # keep i < j only
        m = min(k, sims.numel())
        scores, flat = sims.flatten().topk(m)
        keep = scores > float("-inf")
        scores, flat = scores[keep], flat[keep]
        cand_i = flat // sims.shape[1] + start
        cand_j = flat % sims.shape[1] + start
        merged = torch.cat([best, scores])
        order = merged.topk(min(k, merged.numel())).indices
        best = merged[order]
        best_i = torch.cat([best_i, cand_i])[order]
        best_j = torch.cat([best_j, cand_j])[order]
    return best, best_i, best_j


def top_pairs_faiss(z: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`top_pairs` through faiss (exact inner-product index), for large collections.

    Exact too: a pair among the ``k`` best overall has each member among the other's ``k``
    nearest neighbours, so searching every row's ``k + 1`` neighbours (itself included) and
    keeping the best ``i < j`` pairs finds them. Needs ``pip install faiss-cpu`` (or faiss-gpu).
    """
    import faiss

    x = np.ascontiguousarray(z.detach().float().cpu().numpy())  # (N, D)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    scores, neighbours = index.search(x, min(k + 1, len(x)))  # (N, k + 1) each
    rows = np.repeat(np.arange(len(x)), neighbours.shape[1])
    cols, flat = neighbours.ravel(), scores.ravel()
    keep = (cols > rows) & (cols >= 0)  # each pair once (i < j); -1 marks "no neighbour"
    rows, cols, flat = rows[keep], cols[keep], flat[keep]
    order = np.argsort(-flat, kind="stable")[:k]
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a[order]))  # noqa: E731
    return as_tensor(flat), as_tensor(rows).long(), as_tensor(cols).long()


def faiss_available() -> bool:
    """Whether faiss can be imported (it is optional)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def nearest(z: Tensor, query: Tensor, k: int, exclude: int | None = None) -> tuple[Tensor, Tensor]:
    """The ``k`` rows of ``z`` (``(N, D)``) with the largest dot product with ``query`` (``(D,)``).

    Returns:
        ``(scores, index)``, each ``(k,)``, best first; row ``exclude`` is never returned.
    """
    sims = z @ query  # (N,)
    if exclude is not None:
        sims[exclude] = float("-inf")
    scores, index = sims.topk(min(k, z.shape[0] - (exclude is not None)))
    return scores, index


# ---- drawing ------------------------------------------------------------------------------


def _shorten(text: str, width: int = 48) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3) :]


def draw_grid(
    rows: list[dict], load, out: Path, thumb: int = 112, text_width: int = 420
) -> Image.Image:
    """One row per pair: two thumbnails, then the similarities and the (shortened) ids.

    Args:
        rows: dicts with ``a``, ``b`` (source indices), ``id_a``, ``id_b`` and ``lines``
            (text lines: similarities first).
        load: ``load(index) -> PIL.Image`` of the source.
        out: where the PNG is written.
    """
    pad = 6
    height = thumb + 2 * pad
    grid = Image.new("RGB", (2 * thumb + 3 * pad + text_width, height * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for r, row in enumerate(rows):
        y = r * height + pad
        for c, index in enumerate((row["a"], row["b"])):
            try:
                image = ImageOps.fit(load(index), (thumb, thumb), Image.Resampling.BICUBIC)
                grid.paste(image, (pad + c * (thumb + pad), y))
            except Exception:
                draw.rectangle([pad + c * (thumb + pad), y, (c + 1) * (thumb + pad), y + thumb])
        x = 2 * thumb + 3 * pad
        lines = [*row["lines"], "A: " + _shorten(row["id_a"]), "B: " + _shorten(row["id_b"])]
        for t, line in enumerate(lines):
            draw.text((x, y + 4 + 16 * t), line, fill="black")
        draw.line([0, (r + 1) * height - 1, grid.width, (r + 1) * height - 1], fill="#cccccc")
    grid.save(out)
    return grid


# ---- the two commands ---------------------------------------------------------------------


def _check_new(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise ExploreError(f"{path} exists; pass --overwrite to replace it")


def _embed_with(args, ckpt: str, device: torch.device, source: ImageSource | None = None):
    if ckpt == getattr(args, "compare_ckpt", None):
        model, trained_size = load_compare_model(ckpt, args.compare_pretrained, device)
    else:
        model, trained_size = load_method(ckpt, device)
    image_size = args.image_size or trained_size or DEFAULT_IMAGE_SIZE
    if isinstance(model, Encoder):  # a pretrained model sees the size it was made for
        image_size = model.image_size or image_size
    if source is None:
        source = image_source(args.images, image_size)
    emb = embed_source(
        model, source, image_size, device, args.batch_size, args.num_workers, not args.no_progress
    )
    print(
        f"embedded {len(emb.ids)} of {len(source)} images with {ckpt} "
        f"({emb.z.shape[1]} dims, {image_size} px)",
        file=sys.stderr,
    )
    if emb.skipped:
        print(f"skipped {len(emb.skipped)} unreadable: {_first(emb.skipped)}", file=sys.stderr)
    return emb, source


def run_embed(args: argparse.Namespace) -> None:
    """``contrastive embed``: write ``OUT`` (float32 ``(N, D)``) and ``OUT.ids.txt``."""
    out = Path(args.out)
    ids_path = out.with_suffix(".ids.txt")
    for path in (out, ids_path):
        _check_new(path, args.overwrite)
    emb, _ = _embed_with(args, args.ckpt, resolve_device(args.device))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:  # np.save on a file object keeps the name as given
        np.save(f, emb.z.numpy().astype(np.float32))
    ids_path.write_text("".join(i + "\n" for i in emb.ids))
    print(f"wrote {out} {tuple(emb.z.shape)} and {ids_path}", file=sys.stderr)


def run_similar(args: argparse.Namespace) -> list[dict]:
    """``contrastive similar``: the most similar pairs (or ``--query`` neighbours) as a PNG."""
    out = Path(args.out)
    _check_new(out, args.overwrite)
    if args.top < 1:
        raise ExploreError(f"--top must be >= 1, got {args.top}")
    device = resolve_device(args.device)
    emb, source = _embed_with(args, args.ckpt, device)
    z = torch.nn.functional.normalize(emb.z.to(device), dim=1)  # (N, D), unit rows
    if args.query is None:
        use_faiss = args.search == "faiss" or (args.search == "auto" and faiss_available())
        if args.search == "faiss" and not faiss_available():
            raise ExploreError("--search faiss: faiss is not installed (pip install faiss-cpu)")
        if use_faiss:
            scores, i, j = top_pairs_faiss(z, args.top)
        else:
            scores, i, j = top_pairs(z, args.top, args.chunk_size)
        pairs = [(int(a), int(b), float(s)) for a, b, s in zip(i, j, scores, strict=True)]
        query = query_emb = None
    else:
        if not Path(args.query).is_file():
            raise ExploreError(f"--query {args.query}: no such file")
        query = ImageSource([args.query], paths=[Path(args.query)])
        query_emb, _ = _embed_with(args, args.ckpt, device, query)
        same = os.path.realpath(args.query)
        exclude = next(
            (r for r, i in enumerate(emb.ids) if os.path.realpath(i) == same), None
        )  # the query itself, when it is in the collection
        q = torch.nn.functional.normalize(query_emb.z[0].to(device), dim=0)  # (D,)
        scores, index = nearest(z, q, args.top, exclude)
        pairs = [(-1, int(b), float(s)) for b, s in zip(index, scores, strict=True)]
    other = None
    if args.compare_ckpt:
        other_emb, _ = _embed_with(args, args.compare_ckpt, device, source)
        other_rows = {r: n for n, r in enumerate(other_emb.rows)}
        other = torch.nn.functional.normalize(other_emb.z, dim=1)  # (N', D')
        if query_emb is not None:
            other_q, _ = _embed_with(args, args.compare_ckpt, device, query)
            other_q = torch.nn.functional.normalize(other_q.z[0], dim=0)
    rows = []
    for a, b, score in pairs:
        row = {
            "a": -1 if a < 0 else emb.rows[a],
            "b": emb.rows[b],
            "id_a": args.query if a < 0 else emb.ids[a],
            "id_b": emb.ids[b],
            "similarity": score,
        }
        lines = [f"cos {score:+.4f}  --ckpt {_shorten(args.ckpt, 36)}"]
        if other is not None:
            za = other_q if a < 0 else other[other_rows.get(row["a"], -1)]
            zb = other[other_rows[row["b"]]] if row["b"] in other_rows else None
            row["compare_similarity"] = None if zb is None else float(za @ zb)
            shown = "n/a" if zb is None else f"{row['compare_similarity']:+.4f}"
            lines.append(f"cos {shown}  --compare-ckpt {_shorten(args.compare_ckpt, 28)}")
        row["lines"] = lines
        rows.append(row)

    def load(index: int) -> Image.Image:
        return query.load(0) if index < 0 else source.load(index)

    out.parent.mkdir(parents=True, exist_ok=True)
    draw_grid(rows, load, out)
    _print_table(rows, other is not None)
    print(f"wrote {out} ({len(rows)} rows)", file=sys.stderr)
    return rows


def _print_table(rows: list[dict], compare: bool) -> None:
    header = ["rank", "cosine"] + (["compare"] if compare else []) + ["a", "b"]
    print("\t".join(header))
    for rank, row in enumerate(rows, 1):
        cells = [str(rank), f"{row['similarity']:.4f}"]
        if compare:
            c = row["compare_similarity"]
            cells.append("n/a" if c is None else f"{c:.4f}")
        print("\t".join([*cells, row["id_a"], row["id_b"]]))


# ---- argument parsing ---------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 1, like the rest of the CLI
        print(f"error: {self.prog}: {message}", file=sys.stderr)
        raise SystemExit(1)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="contrastive", description="Inspect a trained embedding.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    embed = commands.add_parser("embed", help="write the embeddings of a set of images")
    similar = commands.add_parser("similar", help="draw the most similar pairs of images")
    for sub in (embed, similar):
        sub.add_argument("--ckpt", required=True, help="a checkpoint of a ContrastiveMethod")
        sub.add_argument(
            "--images", required=True, help="a folder, a manifest (one path a line) or shapes:N"
        )
        sub.add_argument("--out", required=True)
        sub.add_argument("--batch-size", type=int, default=256)
        sub.add_argument("--num-workers", type=int, default=0)
        sub.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda")
        sub.add_argument(
            "--image-size", type=int, default=None, help="default: the training size, else 224"
        )
        sub.add_argument("--overwrite", action="store_true")
        sub.add_argument("--no-progress", action="store_true")
    similar.add_argument("--top", type=int, default=16)
    similar.add_argument("--query", default=None, help="an image: its neighbours, not pairs")
    similar.add_argument(
        "--compare-ckpt",
        default=None,
        help="a second model's similarities: a checkpoint, or a backbone from the registry "
        "such as open_clip:ViT-B-32 (with --compare-pretrained) or timm:NAME",
    )
    similar.add_argument(
        "--compare-pretrained",
        default=None,
        help="weights of a registry --compare-ckpt: an open_clip tag (laion2b_s34b_b79k), a "
        "local file, or true for the default",
    )
    similar.add_argument("--chunk-size", type=int, default=4096, help="rows scored at once")
    similar.add_argument(
        "--search",
        choices=["auto", "torch", "faiss"],
        default="auto",
        help="pair search: faiss when installed (auto), else exact chunked torch",
    )
    return parser


def main(argv: list[str]) -> None:
    """Run ``embed`` or ``similar``; user mistakes end with one line and exit code 1."""
    args = build_parser().parse_args(argv)
    try:
        run_embed(args) if args.command == "embed" else run_similar(args)
    except ExploreError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
