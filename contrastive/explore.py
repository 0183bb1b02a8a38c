"""Looking at a trained embedding: ``contrastive embed`` and ``contrastive similar``.

``contrastive embed --ckpt RUN.ckpt --images DIR|MANIFEST|shapes:N --out emb.npy`` writes the
``(N, D)`` float32 embeddings and ``emb.ids.jsonl`` (one id per row, as a JSON string).
``contrastive similar`` embeds the same way, then draws the most similar pairs of the collection
(or the nearest neighbours of ``--query IMG``) as a labelled PNG grid and prints them as a
table; images identical as embedded (cosine 1 from the same pixels) are reported apart, as
groups, and not ranked. Files are read as the checkpoint's data module read them in training
(its size, centre crop or letterbox, pixel limit; ``--image_size``, ``--resize`` and
``--max_pixels`` override). The images and their embedding are in :mod:`contrastive.collection`,
the pair search and the grid in :mod:`contrastive.pairs`. Checkpoints load through
:func:`contrastive.checkpoints.load_method`: a class outside ``contrastive`` needs
``--trust_module``. The output location is checked before any work, and nothing is
overwritten without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from contrastive.checkpoints import CheckpointError, add_trust_argument, load_method
from contrastive.cli_errors import ToolParser
from contrastive.collection import (
    DEFAULT_IMAGE_SIZE,
    Embeddings,
    ExploreError,
    ImageSource,
    _first,
    embed_source,
    image_source,
    resolve_device,
    write_ids,
)
from contrastive.datamodules.common import Skipped
from contrastive.datamodules.images import RESIZE_MODES, Reading
from contrastive.encoder import Encoder
from contrastive.pairs import (
    draw_grid,
    faiss_available,
    nearest,
    shorten,
    shown,
    top_pairs,
    top_pairs_faiss,
)


def load_compare_model(
    spec: str, pretrained: str | None, device: torch.device, trusted: list[str] = ()
):
    """The ``--compare_ckpt`` model: a checkpoint, or a backbone from the registry
    (``open_clip:ViT-B-32`` with ``--compare_pretrained laion2b_s34b_b79k``, ``timm:NAME``).

    Returns:
        ``(model with .embed, how it reads images)``.
    """
    if Path(spec).expanduser().is_file() or spec.endswith(".ckpt"):
        return load_method(spec, device, trusted, what="--compare_ckpt")
    from contrastive.backbones import BackboneWeightsError, UnknownBackboneError, create_backbone

    weights: bool | str = {None: False, "true": True}.get(pretrained, pretrained)
    try:
        model = Encoder(create_backbone(spec, pretrained=weights))
    except (UnknownBackboneError, BackboneWeightsError) as err:
        raise ExploreError(f"--compare_ckpt {spec}: {err}") from None
    return model.eval().to(device), Reading(model.image_size)


# ---- the two commands ---------------------------------------------------------------------

THUMB = 112  # side of the grid's thumbnails, in pixels


def check_output(path: Path, overwrite: bool) -> None:
    """Refuse, before any work, an output that exists (without ``--overwrite``), that is a
    folder, or that could not be written: under a file, or in a folder not writable."""
    try:
        if path.is_dir():
            raise ExploreError(f"--out {path}: is a folder; name a file")
        if path.exists() and not overwrite:
            raise ExploreError(f"--out {path}: exists; pass --overwrite to replace it")
        folder = path.parent
        while not folder.exists() and folder != folder.parent:  # created later, from here on
            folder = folder.parent
        if not folder.is_dir():
            raise ExploreError(f"--out {path}: {folder} is a file, not a folder")
    except OSError as err:  # a folder on the way that cannot be entered
        raise ExploreError(f"--out {path}: {err.strerror}") from None
    effective = os.access in os.supports_effective_ids
    if not os.access(folder, os.W_OK | os.X_OK, effective_ids=effective):
        raise ExploreError(f"--out {path}: cannot write in the folder {folder}")


class _Loaded(NamedTuple):
    model: torch.nn.Module  # with .embed
    reading: Reading  # how it reads images, image_size set
    name: str  # as given on the command line


def _load(args, ckpt: str, device: torch.device, compare: bool = False) -> _Loaded:
    """The model of ``--ckpt`` (or ``--compare_ckpt``) and how it reads images: as its training
    data did, but for what the command line sets."""
    if compare:
        model, trained = load_compare_model(ckpt, args.compare_pretrained, device, args.trust)
    else:
        model, trained = load_method(ckpt, device, args.trust, what="--ckpt")
    reading = trained.but(
        image_size=args.image_size, resize=args.resize, max_pixels=args.max_pixels
    )
    if isinstance(model, Encoder) and model.image_size:  # a pretrained model: its own size
        reading = reading._replace(image_size=model.image_size)
    if reading.image_size is None:
        reading = reading._replace(image_size=DEFAULT_IMAGE_SIZE)
    return _Loaded(model, reading, ckpt)


def _embed_with(args, loaded: _Loaded, device: torch.device, source: ImageSource | None = None):
    reading = loaded.reading
    if source is None:
        source = image_source(args.images, reading.image_size)
    emb = embed_source(
        loaded.model,
        source,
        reading,
        device,
        args.batch_size,
        args.num_workers,
        not args.no_progress,
    )
    print(
        f"embedded {len(emb.ids)} of {len(source)} images with {loaded.name} "
        f"({emb.z.shape[1]} dims, {reading.image_size} px, {reading.resize})",
        file=sys.stderr,
    )
    if emb.skipped:
        print(f"skipped {len(emb.skipped)} unreadable: {_first(emb.skipped)}", file=sys.stderr)
    return emb, source


def embed_images(args: argparse.Namespace) -> Embeddings:
    """What ``contrastive embed`` computes: the images of ``--images`` embedded by ``--ckpt``."""
    device = resolve_device(args.device)
    emb, _ = _embed_with(args, _load(args, args.ckpt, device), device)
    return emb


def run_embed(args: argparse.Namespace) -> Embeddings:
    """``contrastive embed``: write ``OUT`` (float32 ``(N, D)``) and ``OUT.ids.jsonl``."""
    out = Path(args.out)
    ids_path = out.with_suffix(".ids.jsonl")
    for path in (out, ids_path):
        check_output(path, args.overwrite)
    emb = embed_images(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:  # np.save on a file object keeps the name as given
        np.save(f, emb.z.numpy().astype(np.float32))
    write_ids(ids_path, emb.ids)
    print(f"wrote {out} {tuple(emb.z.shape)} and {ids_path}", file=sys.stderr)
    return emb


def run_similar(args: argparse.Namespace) -> list[dict]:
    """``contrastive similar``: the most similar pairs (or ``--query`` neighbours) as a PNG."""
    out = Path(args.out)
    check_output(out, args.overwrite)
    if args.top < 1:
        raise ExploreError(f"--top must be >= 1, got {args.top}")
    device = resolve_device(args.device)
    if args.query is not None and not Path(args.query).is_file():
        raise ExploreError(f"--query {args.query}: no such file")
    model = _load(args, args.ckpt, device)  # both models before any work: a mistake ends early
    other_model = (
        _load(args, args.compare_ckpt, device, compare=True) if args.compare_ckpt else None
    )
    emb, source = _embed_with(args, model, device)
    z = torch.nn.functional.normalize(emb.z.to(device), dim=1)  # (N, D), unit rows
    duplicates: list[list[int]] = []
    if args.query is None:
        use_faiss = args.search == "faiss" or (args.search == "auto" and faiss_available())
        if args.search == "faiss" and not faiss_available():
            raise ExploreError(
                "--search faiss: faiss is not installed (pip install 'contrastive[faiss]')"
            )
        # Identical images (cosine 1 from the same pixels) are reported apart; the ranking
        # sees one of each, so repeated or degenerate files do not fill the picture.
        duplicates = emb.duplicates()
        repeated = {row for group in duplicates for row in group[1:]}
        kept = [row for row in range(len(emb.ids)) if row not in repeated]
        if use_faiss:
            scores, i, j = top_pairs_faiss(z[kept], args.top)
        else:
            scores, i, j = top_pairs(z[kept], args.top, args.chunk_size)
        pairs = [
            (kept[int(a)], kept[int(b)], float(s)) for a, b, s in zip(i, j, scores, strict=True)
        ]
        query = query_emb = None
    else:
        query = ImageSource([args.query], paths=[Path(args.query)])
        query_emb, _ = _embed_with(args, model, device, query)
        same = os.path.realpath(args.query)
        exclude = next(
            (r for r, i in enumerate(emb.ids) if os.path.realpath(i) == same), None
        )  # the query itself, when it is in the collection
        q = torch.nn.functional.normalize(query_emb.z[0].to(device), dim=0)  # (D,)
        scores, index = nearest(z, q, args.top, exclude)
        pairs = [(-1, int(b), float(s)) for b, s in zip(index, scores, strict=True)]
    other = None
    if other_model is not None:
        other_emb, _ = _embed_with(args, other_model, device, source)
        other_rows = {r: n for n, r in enumerate(other_emb.rows)}
        other = torch.nn.functional.normalize(other_emb.z, dim=1)  # (N', D')
        if query_emb is not None:
            other_q, _ = _embed_with(args, other_model, device, query)
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
        lines = [f"cos {score:+.4f}  --ckpt {shorten(args.ckpt, 36)}"]
        if other is not None:
            za = other_q if a < 0 else other[other_rows.get(row["a"], -1)]
            zb = other[other_rows[row["b"]]] if row["b"] in other_rows else None
            row["compare_similarity"] = None if zb is None else float(za @ zb)
            value = "n/a" if zb is None else f"{row['compare_similarity']:+.4f}"
            lines.append(f"cos {value}  --compare_ckpt {shorten(args.compare_ckpt, 28)}")
        row["lines"] = lines
        rows.append(row)

    thumbs = model.reading._replace(image_size=THUMB)  # the model's view, at the grid's size

    def load(index: int) -> Image.Image:
        image = query.read(0, thumbs) if index < 0 else source.read(index, thumbs)
        if isinstance(image, Skipped):
            raise OSError(image.reason)  # drawn as an empty frame
        return Image.fromarray(image.permute(1, 2, 0).numpy())

    out.parent.mkdir(parents=True, exist_ok=True)
    draw_grid(rows, load, out, THUMB)
    _print_table(rows, other is not None)
    _print_duplicates([[emb.ids[row] for row in group] for group in duplicates])
    print(f"wrote {out} ({len(rows)} rows)", file=sys.stderr)
    return rows


def _print_duplicates(groups: list[list[str]], shown_groups: int = 20) -> None:
    """The groups of identical images, one a line, after the ranked pairs."""
    if not groups:
        return
    images = sum(len(g) for g in groups)
    print(
        f"\nexact duplicates: {len(groups)} groups of identical images ({images} images; "
        "cosine 1 from the same pixels as embedded), left out of the pairs above"
    )
    for n, group in enumerate(groups[:shown_groups], 1):
        print("\t".join([f"dup{n}", *(shown(i) for i in group)]))
    if len(groups) > shown_groups:
        print(f"... and {len(groups) - shown_groups} more groups")


def _print_table(rows: list[dict], compare: bool) -> None:
    header = ["rank", "cosine"] + (["compare"] if compare else []) + ["a", "b"]
    print("\t".join(header))
    for rank, row in enumerate(rows, 1):
        cells = [str(rank), f"{row['similarity']:.4f}"]
        if compare:
            c = row["compare_similarity"]
            cells.append("n/a" if c is None else f"{c:.4f}")
        print("\t".join([*cells, shown(row["id_a"]), shown(row["id_b"])]))


# ---- argument parsing ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog="contrastive", description="Inspect a trained embedding.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ToolParser)
    about = {
        "embed": "Write the embeddings of a set of images to --out (float32 (N, D)), ids beside.",
        "similar": "Draw the most similar pairs of a set of images, or one image's neighbours.",
    }
    embed, similar = (
        commands.add_parser(name, help=text[0].lower() + text[1:-1], description=text)
        for name, text in about.items()
    )
    for sub in (embed, similar):
        sub.add_argument("--ckpt", required=True, help="a checkpoint of a ContrastiveMethod")
        add_trust_argument(sub)
        sub.add_argument(
            "--images",
            required=True,
            help="a folder, a manifest (one path a line; .jsonl: one JSON string a line) or "
            "shapes:N",
        )
        sub.add_argument("--out", required=True)
        sub.add_argument("--batch_size", type=int, default=256)
        sub.add_argument("--num_workers", type=int, default=0)
        sub.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda")
        sub.add_argument(
            "--image_size", type=int, default=None, help="default: the training size, else 224"
        )
        sub.add_argument(
            "--resize",
            choices=RESIZE_MODES,
            default=None,
            help="crop: the centre square; letterbox: the whole image on white (default: as "
            "the checkpoint's data module, else crop)",
        )
        sub.add_argument(
            "--max_pixels",
            type=int,
            default=None,
            help="larger images are skipped as possible decompression bombs (default: the "
            "checkpoint's data module's limit, else 89478485)",
        )
        sub.add_argument("--overwrite", action="store_true")
        sub.add_argument("--no_progress", action="store_true")
    similar.add_argument("--top", type=int, default=16)
    similar.add_argument("--query", default=None, help="an image: its neighbours, not pairs")
    similar.add_argument(
        "--compare_ckpt",
        default=None,
        help="a second model's similarities: a checkpoint, or a backbone from the registry "
        "such as open_clip:ViT-B-32 (with --compare_pretrained) or timm:NAME",
    )
    similar.add_argument(
        "--compare_pretrained",
        default=None,
        help="weights of a registry --compare_ckpt: an open_clip tag (laion2b_s34b_b79k), a "
        "local file, or true for the default",
    )
    similar.add_argument("--chunk_size", type=int, default=4096, help="rows scored at once")
    similar.add_argument(
        "--search",
        choices=["auto", "torch", "faiss"],
        default="auto",
        help="pair search: faiss when installed (auto), else exact chunked torch",
    )
    return parser


def main(argv: list[str]) -> None:
    """Run ``embed`` or ``similar``; user mistakes end with one line and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        run_embed(args) if args.command == "embed" else run_similar(args)
    except (ExploreError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
