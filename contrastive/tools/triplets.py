"""``contrastive data triplets``: a triplet manifest from a labelled or metadata-bearing image set.

The manifest is what :class:`~contrastive.datamodules.triplets.TripletManifestDataModule` reads:
one JSON object per line, ``{"image_a", "image_b", "text", "condition"}`` and, with
``--negatives``, ``"negative"``; paths relative to the manifest's folder::

    contrastive data triplets --images DIR --field class --out triplets.jsonl
    contrastive data triplets --metadata data/nga/manifest.jsonl --field artist --field medium \\
        --pairs field,neighbors --backbone timm:resnet18 --pretrained true --negatives \\
        --num_pairs 5000 --out data/nga/triplets.jsonl

**Images and fields.** ``--images DIR`` is a class-folder tree (``DIR/<class>/<image>``, the
ImageNet layout): each image gets the field ``class``. ``--metadata FILE`` is a CSV, TSV or JSONL
table with an image path column (``--path_column``, default ``path``, relative to the table's
folder) whose other columns are fields; ``contrastive data nga`` writes one (``manifest.jsonl``:
path, objectid, uuid, title, artist, classification, medium, year, displaydate). Both may be
given: rows naming the same file merge their fields. Empty values count as absent: they are
never "shared".

**Pairs** (``--pairs``, repeatable or a comma list; ``--num_pairs N`` for each mode):

- ``field``: for each ``--field NAME`` (N spread evenly over the fields), two images with the
  same value, drawn uniformly among such pairs; a ``--negatives`` image has another value. The
  text comes from a template (below); ``condition`` is the field's name.
- ``neighbors``: every image is embedded with a registry backbone (``--backbone small_cnn``,
  ``timm:resnet18``, ``open_clip:ViT-B-32`` with ``--pretrained TAG``; a random-init backbone
  is seeded by ``--seed``) or a trained method (``--ckpt RUN.ckpt``); each sampled anchor is
  paired with one of its ``--k`` nearest neighbours by cosine similarity. Text
  ``--neighbors_text`` (``"visually similar"``), condition ``neighbors``; a ``--negatives``
  image is outside the anchor's k nearest.
- ``random``: two images drawn uniformly. A ``--describer`` says what they share, one row per
  phrase (condition ``described``); without one, a field they happen to share (among
  ``--field``, or all fields) gives the text. Pairs that share nothing are skipped and counted.

**Templates.** Each pair's text is one of its field's templates, chosen by the seeded RNG;
``{field}`` is the field's name (``_`` read as a space), ``{value}`` the shared value. The
defaults are :data:`DEFAULT_TEMPLATES`; ``--template color="same colour"`` (repeatable) gives a
field its own.

**Describers** (:mod:`contrastive.tools.describe`). :class:`Describer` is the plug-in
interface; :class:`ChatDescriber` (``--describer chat --base_url URL --model NAME``) asks any
OpenAI-compatible ``/chat/completions`` endpoint with both images inline, retrying timeouts,
429 and 5xx. ``--workers N`` requests run at once (default 4), with a progress bar (rate and
ETA) on stderr. Each answer is appended to a cache (``--cache``, default ``t.answers.jsonl``
beside ``--out t.jsonl``) as it arrives, keyed by the two images' contents, the model and the
prompt: after Ctrl-C (exit 130), a kill or a crash, the same command asks only for the pairs
not yet answered, and writes what an uninterrupted run would. Failed requests are not cached.

The output is written to a temporary file and renamed, so it is complete or absent; an existing
``--out`` is kept unless ``--overwrite``. One summary line goes to stdout. Exit status: 0 when
rows were written, 1 when no pair could be made, 2 with one ``error:`` line for bad input.
Nothing here imports torch unless ``neighbors`` pairs are asked for.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from contrastive.checkpoints import add_trust_argument
from contrastive.cli_errors import ToolParser
from contrastive.files import TableError, atomic_writer
from contrastive.tools.describe import (
    AnswerCache,
    CacheError,
    ChatDescriber,
    Description,
    describe_pairs,
)
from contrastive.tools.pairs import (
    DEFAULT_TEMPLATES,
    InputError,
    Item,
    Triplet,
    collect,
    field_pairs,
    manifest_rows,
    neighbor_pairs,
    parse_templates,
    random_pairs,
)

PAIR_MODES = ("field", "neighbors", "random")
NEIGHBORS_TEXT = "visually similar"


def embed_items(items: list[Item], args: argparse.Namespace):
    """The L2-normalised embeddings of the readable items, with ``--backbone`` or ``--ckpt``.

    Returns:
        ``(z, rows, skipped)``: ``(N, D)`` float32 unit rows, the item index of each row, and
        one reason per unreadable image.
    """
    import torch

    from contrastive import collection
    from contrastive.backbones import BackboneWeightsError, UnknownBackboneError, create_backbone
    from contrastive.checkpoints import load_method
    from contrastive.datamodules.images import Reading
    from contrastive.encoder import Encoder

    device = collection.resolve_device(args.device)
    try:
        if args.ckpt is not None:
            model, reading = load_method(args.ckpt, device, args.trust)  # as it trained
        else:
            named = {None: False, "true": True, "false": False}
            weights: bool | str = named.get(args.pretrained, args.pretrained)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(args.seed)  # a random-init backbone is the same on every run
                backbone = create_backbone(args.backbone, pretrained=weights)
            model = Encoder(backbone).eval().to(device)
            reading = Reading(model.image_size)
        reading = reading.but(image_size=args.image_size)
        image_size = reading.image_size or collection.DEFAULT_IMAGE_SIZE
        reading = reading._replace(image_size=image_size)
        source = collection.ImageSource([str(i.path) for i in items], paths=[i.path for i in items])
        emb = collection.embed_source(
            model, source, reading, device, args.batch_size, progress=False
        )
    except (collection.ExploreError, UnknownBackboneError, FileNotFoundError, ValueError) as err:
        raise InputError(str(err)) from None  # ValueError: e.g. small_cnn with --pretrained
    except BackboneWeightsError as err:
        raise InputError(f"--backbone {args.backbone}: {err}") from None
    z = torch.nn.functional.normalize(emb.z, dim=1)  # (N, D), cosine similarity as dot product
    print(
        f"triplets: embedded {len(emb.rows)} of {len(items)} images with "
        f"{args.ckpt or args.backbone} ({z.shape[1]} dims, {image_size} px)",
        file=sys.stderr,
    )
    return z, emb.rows, ["unreadable image"] * len(emb.skipped)


def make_neighbor_pairs(items: list[Item], args: argparse.Namespace, n: int, rng: random.Random):
    """:func:`neighbor_pairs` over the embeddings of :func:`embed_items`."""
    from contrastive.pairs import nearest

    z, rows, skipped = embed_items(items, args)
    if len(rows) < 2:
        raise InputError(f"need at least 2 readable images for neighbors, got {len(rows)}")
    k = min(args.k, len(rows) - 1)

    def neighbours(i: int) -> list[int]:
        _, index = nearest(z, z[i], k, exclude=i)
        return index.tolist()

    return neighbor_pairs(neighbours, rows, n, k, args.neighbors_text, rng, args.negatives), skipped


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` as JSON lines through a temporary file renamed into place."""
    with atomic_writer(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


# ---- the command ---------------------------------------------------------------------------


def _check(args: argparse.Namespace) -> None:
    """Argument combinations that cannot work, before anything is read."""
    unknown = [m for m in args.pairs if m not in PAIR_MODES]
    if unknown:
        raise InputError(f"--pairs {unknown[0]!r}: expected one of {', '.join(PAIR_MODES)}")
    if args.images is None and args.metadata is None:
        raise InputError("give --images DIR (class folders) and/or --metadata FILE")
    for name in ("num_pairs", "k", "batch_size", "image_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if "field" in args.pairs and not args.fields:
        raise InputError("--pairs field needs --field NAME (repeatable)")
    if "neighbors" in args.pairs and (args.backbone is None) == (args.ckpt is None):
        raise InputError("--pairs neighbors needs one of --backbone NAME or --ckpt PATH")
    if args.negatives and not {"field", "neighbors"} & set(args.pairs):
        raise InputError("--negatives applies to field and neighbors pairs; add one of them")
    if args.describer is not None:
        if "random" not in args.pairs:
            raise InputError("--describer describes random pairs; add --pairs random")
        if not args.base_url or not args.model:
            raise InputError("--describer chat needs --base_url URL and --model NAME")
        if args.timeout <= 0 or args.retries < 0 or args.backoff < 0 or args.max_tokens < 1:
            raise InputError(
                "expected --timeout > 0, --retries >= 0, --backoff >= 0 and --max_tokens >= 1"
            )
        if args.workers < 1:
            raise InputError(f"--workers must be >= 1, got {args.workers}")
        if cache_path(args).resolve() == args.out.resolve():
            raise InputError(f"--cache {cache_path(args)} is --out; give another file")
    if args.out.exists() and not args.overwrite:
        raise InputError(f"{args.out} exists; pass --overwrite to replace it")


def cache_path(args: argparse.Namespace) -> Path:
    """The describer's answer cache: ``--cache``, or beside ``--out`` with its stem and
    ``.answers.jsonl`` (``t.answers.jsonl`` for ``t.jsonl``)."""
    return args.cache or args.out.with_name(f"{args.out.stem}.answers.jsonl")


def _counts(counter: Counter) -> str:
    return ", ".join(f"{k}: {n}" for k, n in counter.most_common())


def _make(
    args: argparse.Namespace,
    items: list[Item],
    known: set[str],
    templates: dict[str, list[str]],
    skipped: list[str],
    describe: Callable[[list[tuple[Path, Path]]], list[Description]] | None,
) -> tuple[list[Triplet], list[str], dict[str, str]]:
    """Each mode's pairs; returns the triplets, every skip reason, and what each mode made."""
    triplets: list[Triplet] = []
    made: dict[str, str] = {}
    for mode in dict.fromkeys(args.pairs):
        rng = random.Random(f"{args.seed}:{mode}")  # each mode's draws independent of the others
        if mode == "field":
            per_field = Counter()
            for f, name in enumerate(args.fields):
                n = args.num_pairs // len(args.fields) + (f < args.num_pairs % len(args.fields))
                rows = field_pairs(items, name, n, templates[name], rng, args.negatives)
                per_field[name] = len(rows)
                triplets += rows
            by_field = ", ".join(f"{name} {count}" for name, count in per_field.items())
            made[mode] = f"{per_field.total()} ({by_field})"
        elif mode == "neighbors":
            rows, unreadable = make_neighbor_pairs(items, args, args.num_pairs, rng)
            triplets, skipped, made[mode] = triplets + rows, skipped + unreadable, str(len(rows))
        else:
            fields = args.fields or sorted(known)
            rows, failed = random_pairs(items, args.num_pairs, fields, templates, rng, describe)
            triplets, skipped, made[mode] = triplets + rows, skipped + failed, str(len(rows))
    return triplets, skipped, made


def run(args: argparse.Namespace) -> int:
    """Read the images, make each mode's pairs, write the manifest, print the summary."""
    _check(args)
    items, skipped = collect(args.images, args.metadata, args.path_column)
    known = {name for item in items for name in item.fields}
    for name in args.fields:
        if name not in known:
            raise InputError(f"--field {name}: unknown field; fields: {sorted(known)}")
    templates = parse_templates(args.template, known)
    cache = describe = None
    try:
        if args.describer == "chat":
            stop = threading.Event()
            describer = ChatDescriber(
                args.base_url,
                args.model,
                api_key=os.environ.get(args.api_key_env),
                timeout=args.timeout,
                retries=args.retries,
                max_tokens=args.max_tokens,
                backoff=args.backoff,
                stop=stop,
            )
            try:
                cache = AnswerCache(cache_path(args))
            except (CacheError, TableError) as err:
                raise InputError(str(err)) from None
            describe = partial(
                describe_pairs, describer, workers=args.workers, cache=cache, stop=stop
            )
        triplets, skipped, made = _make(args, items, known, templates, skipped, describe)
    finally:
        if cache is not None:
            cache.close()
    made_text = ", ".join(f"{mode} {n}" for mode, n in made.items())
    skipped_text = f"skipped {len(skipped)}"
    if skipped:
        skipped_text += f" ({_counts(Counter(skipped))})"
    if not triplets:
        print(f"error: no triplets made ({made_text}); {skipped_text}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out, manifest_rows(triplets, items, args.out.parent))
    print(f"triplets: made {len(triplets)} rows in {args.out} ({made_text}); {skipped_text}")
    return 0


class _Parser(ToolParser):
    def error(self, message: str):  # bad arguments are bad input: one line, exit status 2
        raise InputError(message)


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="contrastive data triplets",
        description="Make a triplet manifest (image_a, image_b, text) from folders or a table.",
    )
    source = parser.add_argument_group("images")
    source.add_argument(
        "--images", type=Path, metavar="DIR", help="class folders: DIR/<class>/<image>"
    )
    source.add_argument(
        "--metadata", type=Path, metavar="FILE", help="a CSV/TSV/JSONL table of images and fields"
    )
    source.add_argument(
        "--path_column", default="path", metavar="NAME", help="the table's image path column"
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="the manifest to write (.jsonl)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    pairs = parser.add_argument_group("pairs")
    pairs.add_argument(
        "--pairs",
        action="append",
        type=_comma_list,
        metavar="MODES",
        help=f"pair modes, repeatable or comma-separated: {', '.join(PAIR_MODES)} (default field)",
    )
    pairs.add_argument("--num_pairs", type=int, default=1000, help="pairs per mode (default 1000)")
    pairs.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    pairs.add_argument(
        "--field",
        dest="fields",
        action="append",
        default=[],
        metavar="NAME",
        help="a field pairs share",
    )
    pairs.add_argument(
        "--negatives", action="store_true", help="add a negative image to field/neighbors pairs"
    )
    pairs.add_argument(
        "--template",
        action="append",
        default=[],
        metavar="FIELD=TEXT",
        help="FIELD=TEXT with {field} and {value}, repeatable; default: "
        + " | ".join(DEFAULT_TEMPLATES),
    )
    near = parser.add_argument_group("neighbors")
    near.add_argument(
        "--backbone", metavar="NAME", help="a registry backbone: small_cnn, timm:resnet18, ..."
    )
    near.add_argument("--pretrained", help="its weights: true, an open_clip tag, or a file")
    near.add_argument(
        "--ckpt", metavar="PATH", help="a trained method's checkpoint, instead of --backbone"
    )
    add_trust_argument(near)
    near.add_argument("--k", type=int, default=5, help="pair among the k nearest (default 5)")
    near.add_argument("--neighbors_text", default=NEIGHBORS_TEXT, help="their condition text")
    near.add_argument("--image_size", type=int, help="default: the model's or the training size")
    near.add_argument("--batch_size", type=int, default=64)
    near.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda")
    chat = parser.add_argument_group("describer (random pairs)")
    chat.add_argument("--describer", choices=["chat"], help="describe random pairs with a model")
    chat.add_argument("--base_url", help="OpenAI-compatible API root, e.g. http://host:8000/v1")
    chat.add_argument("--model", help="the model name")
    chat.add_argument("--api_key_env", default="OPENAI_API_KEY", help="env var of the API key")
    chat.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    chat.add_argument("--retries", type=int, default=3, help="retries per pair (default 3)")
    chat.add_argument("--backoff", type=float, default=1.0, help="first retry delay, seconds")
    chat.add_argument("--max_tokens", type=int, default=200)
    chat.add_argument("--workers", type=int, default=4, help="requests at a time (default 4)")
    chat.add_argument(
        "--cache",
        type=Path,
        metavar="FILE",
        help="answers kept as they arrive, reused by a rerun (default: beside --out, "
        "e.g. t.answers.jsonl for t.jsonl)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``contrastive data triplets``; returns the exit status."""
    args = None
    try:
        args = build_parser().parse_args(argv)
        args.pairs = [m for group in args.pairs or [["field"]] for m in group]
        return run(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        described = args is not None and args.describer is not None
        kept = f"; the answers had are kept in {cache_path(args)}" if described else ""
        print(f"\ntriplets: interrupted{kept}; run the same command again", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
