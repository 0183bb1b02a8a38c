"""``contrastive data triplets``: a triplet manifest from a labelled or metadata-bearing image set.

The manifest is what :class:`~contrastive.datamodules.triplets.TripletManifestDataModule` reads:
one JSON object per line, ``{"image_a", "image_b", "text", "condition"}`` and, with
``--negatives``, ``"negative"``; paths relative to the manifest's folder::

    contrastive data triplets --images DIR --field class --out triplets.jsonl
    contrastive data triplets --metadata data/nga/manifest.jsonl --field artist --field medium \\
        --pairs field,neighbors --backbone timm:resnet18 --pretrained true --negatives \\
        --num-pairs 5000 --out data/nga/triplets.jsonl

**Images and fields.** ``--images DIR`` is a class-folder tree (``DIR/<class>/<image>``, the
ImageNet layout): each image gets the field ``class``. ``--metadata FILE`` is a CSV, TSV or JSONL
table with an image path column (``--path-column``, default ``path``, relative to the table's
folder) whose other columns are fields; ``contrastive data nga`` writes one (``manifest.jsonl``:
path, objectid, uuid, title, artist, classification, medium, year, displaydate). Both may be
given: rows naming the same file merge their fields. Empty values count as absent: they are
never "shared".

**Pairs** (``--pairs``, repeatable or a comma list; ``--num-pairs N`` for each mode):

- ``field``: for each ``--field NAME`` (N spread evenly over the fields), two images with the
  same value, drawn uniformly among such pairs; a ``--negatives`` image has another value. The
  text comes from a template (below); ``condition`` is the field's name.
- ``neighbors``: every image is embedded with a registry backbone (``--backbone small_cnn``,
  ``timm:resnet18``, ``open_clip:ViT-B-32`` with ``--pretrained TAG``; a random-init backbone
  is seeded by ``--seed``) or a trained method (``--ckpt RUN.ckpt``); each sampled anchor is
  paired with one of its ``--k`` nearest neighbours by cosine similarity. Text
  ``--neighbors-text`` (``"visually similar"``), condition ``neighbors``; a ``--negatives``
  image is outside the anchor's k nearest.
- ``random``: two images drawn uniformly. A ``--describer`` says what they share, one row per
  phrase (condition ``described``); without one, a field they happen to share (among
  ``--field``, or all fields) gives the text. Pairs that share nothing are skipped and counted.

**Templates.** Each pair's text is one of its field's templates, chosen by the seeded RNG;
``{field}`` is the field's name (``_`` read as a space), ``{value}`` the shared value. The
defaults are :data:`DEFAULT_TEMPLATES`; ``--template color="same colour"`` (repeatable) gives a
field its own.

**Describers.** :class:`Describer` is the plug-in interface; :class:`ChatDescriber`
(``--describer chat --base-url URL --model NAME``) asks any OpenAI-compatible
``/chat/completions`` endpoint with both images inline, retrying timeouts, 429 and 5xx.

The output is written to a temporary file and renamed, so it is complete or absent; an existing
``--out`` is kept unless ``--overwrite``. One summary line goes to stdout. Exit status: 0 when
rows were written, 1 when no pair could be made, 2 with one ``error:`` line for bad input.
Nothing here imports torch unless ``neighbors`` pairs are asked for.
"""

from __future__ import annotations

import argparse
import base64
import csv
import http.client
import io
import json
import os
import random
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageOps

from contrastive.tools.nga import RETRY_STATUSES, FetchError, _retry_after, backoff_delay

PAIR_MODES = ("field", "neighbors", "random")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
DEFAULT_TEMPLATES = ("same {field}", "they share a {field}", "both have {field} {value}")
NEIGHBORS_TEXT = "visually similar"
FOLDER_FIELD = "class"
PROMPT = (
    "Here are two images. In what respects are they alike? Answer with only a JSON list of "
    "up to 5 short phrases (2 to 6 words each), each naming one thing both images share, such "
    'as "same color", "both are portraits" or "similar brushwork".'
)
USER_AGENT = "contrastive-data-triplets/0.1 (Python urllib)"
_FENCE = re.compile(r"^```[a-zA-Z]*\s*(.*?)\s*```$", re.DOTALL)


class InputError(Exception):
    """Bad input (a missing folder, an unknown field, an empty set): one line, exit status 2."""


# ---- the images and their fields -----------------------------------------------------------


@dataclass
class Item:
    """One image and its fields (values as text; absent when empty)."""

    path: Path
    fields: dict[str, str] = field(default_factory=dict)


def _value(value: object) -> str | None:
    """A metadata value as text: strings stripped, numbers and booleans written out; ``None``
    for empty values, nulls, lists and objects."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, (int, float)):  # bool is an int
        return str(value)
    return None


def read_class_folders(root: Path) -> list[Item]:
    """The images of ``root/<class>/...``, sorted, each with the field ``class``."""
    if not root.is_dir():
        raise InputError(f"--images {root}: no such folder")
    items = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                items.append(Item(path, {FOLDER_FIELD: folder.name}))
    if not items:
        raise InputError(f"--images {root}: no images in class folders ({root}/<class>/<image>)")
    return items


def _metadata_rows(path: Path) -> list[dict | None]:
    """The rows of a CSV/TSV/JSONL table; ``None`` for a line that is no JSON object."""
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        with open(path, encoding="utf-8") as f:  # not splitlines(): JSON strings may hold U+2028
            for text in f:
                if text.strip():
                    try:
                        row = json.loads(text)
                    except ValueError:
                        row = None
                    rows.append(row if isinstance(row, dict) else None)
        return rows
    separator = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f, delimiter=separator))


def read_metadata(path: Path, path_column: str = "path") -> tuple[list[Item], list[str]]:
    """The images a metadata table names, with its other columns as fields.

    Returns:
        The items in file order, and one reason per skipped row (``"malformed row"``,
        ``"no image path"``, ``"missing image"``).
    """
    if not path.is_file():
        raise InputError(f"--metadata {path}: no such file")
    rows = _metadata_rows(path)
    if not any(row is not None and path_column in row for row in rows):
        columns = sorted({key for row in rows if row for key in row if key})
        raise InputError(f"--metadata {path}: no column {path_column!r}; its columns: {columns}")
    items, skipped = [], []
    for row in rows:
        if row is None:
            skipped.append("malformed row")
            continue
        image = _value(row.get(path_column))
        if image is None:
            skipped.append("no image path")
            continue
        image_path = path.parent / image
        if not image_path.is_file():
            skipped.append("missing image")
            continue
        values = {str(k): _value(v) for k, v in row.items() if k and k != path_column}
        items.append(Item(image_path, {k: v for k, v in values.items() if v is not None}))
    return items, skipped


def collect(
    images: Path | None, metadata: Path | None, path_column: str = "path"
) -> tuple[list[Item], list[str]]:
    """The images of a class-folder tree and/or a metadata table; one item per file (by its
    real path), with the fields of every row that names it."""
    found = read_class_folders(images) if images is not None else []
    skipped: list[str] = []
    if metadata is not None:
        rows, skipped = read_metadata(metadata, path_column)
        found += rows
    merged: dict[str, Item] = {}
    for item in found:
        key = os.path.realpath(item.path)
        if key in merged:
            merged[key].fields.update(item.fields)
        else:
            merged[key] = Item(item.path, dict(item.fields))
    items = list(merged.values())
    if len(items) < 2:
        raise InputError(f"need at least 2 images to pair, found {len(items)}")
    return items, skipped


# ---- describers ----------------------------------------------------------------------------


class Describer(ABC):
    """Says in what respects two images are alike: the text of ``random`` pairs.

    Attributes:
        reason: Why the last :meth:`describe` returned ``None``, in a few words (the tool
            counts skipped pairs by it).
    """

    reason: str = "not described"

    @abstractmethod
    def describe(self, image_a: Path, image_b: Path) -> list[str] | None:
        """Short phrases naming what the two images share; ``None`` if it could not say."""


def parse_phrases(content: str) -> list[str] | None:
    """A JSON list of strings from a model's answer (a ```json fence allowed), stripped and
    without repeats; ``None`` if the answer is not such a list."""
    text = content.strip()
    fenced = _FENCE.match(text)
    if fenced is not None:
        text = fenced.group(1)
    try:
        phrases = json.loads(text)
    except ValueError:
        return None
    if not isinstance(phrases, list) or not all(isinstance(p, str) for p in phrases):
        return None
    return list(dict.fromkeys(p.strip() for p in phrases if p.strip()))


def data_url(path: Path, size: int) -> str:
    """``path`` as a ``data:image/jpeg;base64,...`` URL, its longer side at most ``size``."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


class ChatDescriber(Describer):
    """Asks an OpenAI-compatible ``/chat/completions`` endpoint what two images share.

    Both images go inline (``image_url`` parts holding JPEG data URLs) with :data:`PROMPT`; the
    answer (``choices[0].message.content``) must be a JSON list of strings, optionally in a
    ```json fence. Timeouts, network errors and HTTP 408/425/429/5xx are retried with
    exponential backoff (``Retry-After`` honoured, up to ``max_backoff``); other statuses fail
    the pair at once. Only ``urllib`` is used.

    Args:
        base_url: The API root, e.g. ``https://api.openai.com/v1`` or ``http://localhost:8000/v1``.
        model: The model name sent in the request.
        api_key: Sent as ``Authorization: Bearer KEY``; none when ``None`` (local servers).
        timeout: Seconds a connection or a read may block.
        retries: Further attempts after a retryable failure.
        max_tokens: Longest answer asked for.
        backoff: Seconds before the first retry, doubled for each next one.
        max_backoff: Longest wait between attempts.
        image_size: Images are scaled down to fit this square before sending.
        prompt: The question asked with the two images.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        max_tokens: int = 200,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        image_size: int = 512,
        prompt: str = PROMPT,
    ) -> None:
        if timeout <= 0 or retries < 0 or max_tokens < 1 or backoff < 0 or image_size < 1:
            raise ValueError(
                f"expected timeout > 0, retries >= 0, max_tokens >= 1, backoff >= 0 and "
                f"image_size >= 1, got {timeout}, {retries}, {max_tokens}, {backoff}, {image_size}"
            )
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.timeout, self.retries = model, api_key, timeout, retries
        self.max_tokens, self.backoff, self.max_backoff = max_tokens, backoff, max_backoff
        self.image_size, self.prompt = image_size, prompt
        self.requests = 0  # HTTP requests sent, retries included
        self.reason = "not described"

    def describe(self, image_a: Path, image_b: Path) -> list[str] | None:
        try:
            urls = [data_url(p, self.image_size) for p in (image_a, image_b)]
        except (OSError, ValueError, Image.DecompressionBombError):
            self.reason = "unreadable image"
            return None
        content = [{"type": "text", "text": self.prompt}]
        content += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
        request = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": [{"role": "user", "content": content}],
        }
        try:
            answer = self._post(json.dumps(request).encode())
            phrases = parse_phrases(answer["choices"][0]["message"]["content"])
        except FetchError as err:
            self.reason = err.reason
            return None
        except (KeyError, IndexError, TypeError, AttributeError):  # not the documented shape
            phrases = None
        if not phrases:
            self.reason = "malformed answer" if phrases is None else "empty answer"
            return None
        return phrases

    def _post(self, body: bytes) -> dict:
        """The JSON answer to ``body``, retried as the class docstring says."""
        attempt = 0
        while True:
            try:
                return self._attempt(body)
            except FetchError as err:
                if not err.retry or attempt >= self.retries:
                    raise
                delay = backoff_delay(attempt, self.backoff, self.max_backoff, err.retry_after)
                attempt += 1
                time.sleep(delay)

    def _attempt(self, body: bytes) -> dict:
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        self.requests += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data = response.read()
        except urllib.error.HTTPError as err:
            retry_after = _retry_after(err.headers)
            err.close()
            raise FetchError(
                f"http {err.code}", self.url, err.code in RETRY_STATUSES, retry_after
            ) from None
        except (TimeoutError, urllib.error.URLError) as err:
            timed_out = isinstance(getattr(err, "reason", err), TimeoutError)
            reason = "timeout" if timed_out else "network error"
            raise FetchError(reason, f"{self.url} ({err})", True) from None
        except (OSError, http.client.HTTPException) as err:  # resets, bad status lines
            raise FetchError("network error", f"{self.url} ({err})", True) from None
        try:
            return json.loads(data)
        except ValueError:
            raise FetchError("malformed answer", f"not JSON from {self.url}") from None


# ---- pairs ---------------------------------------------------------------------------------


class Triplet(NamedTuple):
    """A row of the output, images as indices into the items."""

    a: int
    b: int
    text: str
    condition: str
    negative: int | None = None


def _unique(
    draw: Callable[[], tuple[int, int]], n: int, attempts: int, key: Callable = tuple
) -> list[tuple[int, int]]:
    """Up to ``n`` results of ``draw()`` with distinct ``key``, in the order drawn, trying at
    most ``attempts`` times: a pair space can be smaller than asked for."""
    seen: dict[Hashable, tuple[int, int]] = {}
    for _ in range(attempts):
        if len(seen) >= n:
            break
        pair = draw()
        seen.setdefault(key(pair), pair)
    return list(seen.values())


def _attempts(n: int) -> int:
    return 20 * n + 100


def render(template: str, name: str, value: str) -> str:
    """A template filled in: ``{field}`` the field's name (``_`` as a space), ``{value}``."""
    return template.format(field=name.replace("_", " "), value=value)


def _other(rng: random.Random, pool: Sequence[int], excluded: Callable[[int], bool]) -> int | None:
    """A random member of ``pool`` that is not ``excluded``: a few random tries, then a scan."""
    for _ in range(32):
        i = rng.choice(pool)
        if not excluded(i):
            return i
    allowed = [i for i in pool if not excluded(i)]
    return rng.choice(allowed) if allowed else None


def field_pairs(
    items: list[Item],
    name: str,
    n: int,
    templates: Sequence[str],
    rng: random.Random,
    negatives: bool = False,
) -> list[Triplet]:
    """Up to ``n`` distinct pairs of images with the same value of field ``name``, uniform
    among all such pairs; with ``negatives``, a third image with another value."""
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        if name in item.fields:
            groups.setdefault(item.fields[name], []).append(i)
    shared = [g for g in groups.values() if len(g) > 1]
    if not shared:
        return []
    weights = [len(g) * (len(g) - 1) for g in shared]  # pairs per group, twice

    def draw() -> tuple[int, int]:
        (group,) = rng.choices(shared, weights)
        a, b = rng.sample(group, 2)
        return (a, b) if a < b else (b, a)

    having = [i for g in groups.values() for i in g]
    triplets = []
    for a, b in _unique(draw, min(n, sum(weights) // 2), _attempts(n)):
        if rng.random() < 0.5:
            a, b = b, a
        value = items[a].fields[name]
        negative = None
        if negatives:
            negative = _other(rng, having, lambda i, v=value: items[i].fields[name] == v)
        text = render(rng.choice(templates), name, value)
        triplets.append(Triplet(a, b, text, name, negative))
    return triplets


def random_pairs(
    items: list[Item],
    n: int,
    fields: Sequence[str],
    templates: dict[str, list[str]],
    rng: random.Random,
    describer: Describer | None = None,
) -> tuple[list[Triplet], list[str]]:
    """Up to ``n`` distinct uniform pairs; their text from ``describer`` (a row per phrase) or
    else from one of ``fields`` they share.

    Returns:
        The triplets, and one reason per pair that made no row.
    """
    count = len(items)

    def draw() -> tuple[int, int]:
        a, b = rng.sample(range(count), 2)
        return (a, b) if a < b else (b, a)

    triplets, skipped = [], []
    for a, b in _unique(draw, min(n, count * (count - 1) // 2), _attempts(n)):
        if describer is not None:
            phrases = describer.describe(items[a].path, items[b].path)
            if phrases is None:
                skipped.append(describer.reason)
            triplets += [Triplet(a, b, phrase, "described") for phrase in phrases or ()]
            continue
        fa, fb = items[a].fields, items[b].fields
        common = [f for f in fields if f in fa and fa[f] == fb.get(f)]
        if not common:
            skipped.append("nothing shared")
            continue
        name = rng.choice(common)
        triplets.append(Triplet(a, b, render(rng.choice(templates[name]), name, fa[name]), name))
    return triplets, skipped


def neighbor_pairs(
    neighbours: Callable[[int], list[int]],
    rows: list[int],
    n: int,
    k: int,
    text: str,
    rng: random.Random,
    negatives: bool = False,
) -> list[Triplet]:
    """Up to ``n`` distinct pairs of an anchor and one of its ``k`` nearest neighbours.

    Args:
        neighbours: ``i -> [j, ...]``, the ``k`` nearest positions of position ``i``.
        rows: The item index of each embedded position.
        n: Pairs asked for.
        k: Neighbours an anchor is paired among.
        text: The condition text of every pair.
        rng: Draws anchors, neighbours and negatives.
        negatives: Add an image outside the anchor's ``k`` nearest.
    """
    cache: dict[int, list[int]] = {}

    def near(i: int) -> list[int]:
        if i not in cache:
            cache[i] = neighbours(i)
        return cache[i]

    def draw() -> tuple[int, int]:
        anchor = rng.randrange(len(rows))
        return anchor, rng.choice(near(anchor))

    positions = range(len(rows))
    triplets = []
    # (a, b) and (b, a) are one pair; at most every position paired with each of its k nearest.
    for a, b in _unique(draw, min(n, len(rows) * k), _attempts(n), key=frozenset):
        negative = None
        if negatives:
            far = _other(rng, positions, lambda i, a=a: i == a or i in near(a))
            negative = None if far is None else rows[far]
        triplets.append(Triplet(rows[a], rows[b], text, "neighbors", negative))
    return triplets


def embed_items(items: list[Item], args: argparse.Namespace):
    """The L2-normalised embeddings of the readable items, with ``--backbone`` or ``--ckpt``.

    Returns:
        ``(z, rows, skipped)``: ``(N, D)`` float32 unit rows, the item index of each row, and
        one reason per unreadable image.
    """
    import torch

    from contrastive import explore
    from contrastive.backbones import BackboneWeightsError, UnknownBackboneError, create_backbone
    from contrastive.encoder import Encoder

    device = explore.resolve_device(args.device)
    try:
        if args.ckpt is not None:
            model, size = explore.load_method(args.ckpt, device)
        else:
            named = {None: False, "true": True, "false": False}
            weights: bool | str = named.get(args.pretrained, args.pretrained)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(args.seed)  # a random-init backbone is the same on every run
                backbone = create_backbone(args.backbone, pretrained=weights)
            model = Encoder(backbone).eval().to(device)
            size = model.image_size
        image_size = args.image_size or size or explore.DEFAULT_IMAGE_SIZE
        source = explore.ImageSource([str(i.path) for i in items], paths=[i.path for i in items])
        emb = explore.embed_source(
            model, source, image_size, device, args.batch_size, progress=False
        )
    except (explore.ExploreError, UnknownBackboneError, FileNotFoundError, ValueError) as err:
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
    from contrastive.explore import nearest

    z, rows, skipped = embed_items(items, args)
    if len(rows) < 2:
        raise InputError(f"need at least 2 readable images for neighbors, got {len(rows)}")
    k = min(args.k, len(rows) - 1)

    def neighbours(i: int) -> list[int]:
        _, index = nearest(z, z[i], k, exclude=i)
        return index.tolist()

    return neighbor_pairs(neighbours, rows, n, k, args.neighbors_text, rng, args.negatives), skipped


# ---- the output ----------------------------------------------------------------------------


def manifest_rows(triplets: list[Triplet], items: list[Item], folder: Path) -> list[dict]:
    """The JSON rows of ``triplets``, image paths relative to ``folder`` (where they can be)."""

    def where(i: int) -> str:
        try:
            return Path(os.path.relpath(items[i].path.resolve(), folder.resolve())).as_posix()
        except ValueError:  # another drive
            return str(items[i].path.resolve())

    rows = []
    for t in triplets:
        row = {"image_a": where(t.a), "image_b": where(t.b), "text": t.text}
        row["condition"] = t.condition
        if t.negative is not None:
            row["negative"] = where(t.negative)
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` as JSON lines through a temporary file renamed into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- the command ---------------------------------------------------------------------------


def _templates(args: argparse.Namespace, known: set[str]) -> dict[str, list[str]]:
    """Every known field's templates: the defaults, or those of ``--template FIELD=TEXT``."""
    given: dict[str, list[str]] = {}
    for spec in args.template:
        name, sep, text = spec.partition("=")
        if not sep or not text.strip():
            raise InputError(
                f"--template {spec!r}: expected FIELD=TEXT, e.g. color='same {{field}}'"
            )
        given.setdefault(name.strip(), []).append(text.strip())
    for name, texts in given.items():
        if name not in known:
            raise InputError(f"--template {name}=...: unknown field; fields: {sorted(known)}")
        for text in texts:
            try:
                render(text, name, "x")
            except (KeyError, IndexError, ValueError):
                raise InputError(
                    f"--template {name}={text!r}: use only {{field}} and {{value}}"
                ) from None
    return {name: given.get(name, list(DEFAULT_TEMPLATES)) for name in known}


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
            raise InputError("--describer chat needs --base-url URL and --model NAME")
        if args.timeout <= 0 or args.retries < 0 or args.backoff < 0 or args.max_tokens < 1:
            raise InputError(
                "expected --timeout > 0, --retries >= 0, --backoff >= 0 and --max-tokens >= 1"
            )
    if args.out.exists() and not args.overwrite:
        raise InputError(f"{args.out} exists; pass --overwrite to replace it")


def _counts(counter: Counter) -> str:
    return ", ".join(f"{k}: {n}" for k, n in counter.most_common())


def run(args: argparse.Namespace) -> int:
    """Read the images, make each mode's pairs, write the manifest, print the summary."""
    _check(args)
    items, skipped = collect(args.images, args.metadata, args.path_column)
    known = {name for item in items for name in item.fields}
    for name in args.fields:
        if name not in known:
            raise InputError(f"--field {name}: unknown field; fields: {sorted(known)}")
    templates = _templates(args, known)
    describer = None
    if args.describer == "chat":
        describer = ChatDescriber(
            args.base_url,
            args.model,
            api_key=os.environ.get(args.api_key_env),
            timeout=args.timeout,
            retries=args.retries,
            max_tokens=args.max_tokens,
            backoff=args.backoff,
        )
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
            rows, failed = random_pairs(items, args.num_pairs, fields, templates, rng, describer)
            triplets, skipped, made[mode] = triplets + rows, skipped + failed, str(len(rows))
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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # bad arguments are bad input: one line, exit status 2
        raise InputError(message)


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="contrastive data triplets",
        description="Make a triplet manifest (image_a, image_b, text) from class folders or a "
        "metadata table, for text-conditioned similarity.",
    )
    source = parser.add_argument_group("images")
    source.add_argument(
        "--images", type=Path, metavar="DIR", help="class folders: DIR/<class>/<image>"
    )
    source.add_argument(
        "--metadata", type=Path, metavar="FILE", help="a CSV/TSV/JSONL table of images and fields"
    )
    source.add_argument(
        "--path-column", default="path", metavar="NAME", help="the table's image path column"
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
    pairs.add_argument("--num-pairs", type=int, default=1000, help="pairs per mode (default 1000)")
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
    near.add_argument("--k", type=int, default=5, help="pair among the k nearest (default 5)")
    near.add_argument("--neighbors-text", default=NEIGHBORS_TEXT, help="their condition text")
    near.add_argument("--image-size", type=int, help="default: the model's or the training size")
    near.add_argument("--batch-size", type=int, default=64)
    near.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda")
    chat = parser.add_argument_group("describer (random pairs)")
    chat.add_argument("--describer", choices=["chat"], help="describe random pairs with a model")
    chat.add_argument("--base-url", help="OpenAI-compatible API root, e.g. http://host:8000/v1")
    chat.add_argument("--model", help="the model name")
    chat.add_argument("--api-key-env", default="OPENAI_API_KEY", help="env var of the API key")
    chat.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    chat.add_argument("--retries", type=int, default=3, help="retries per pair (default 3)")
    chat.add_argument("--backoff", type=float, default=1.0, help="first retry delay, seconds")
    chat.add_argument("--max-tokens", type=int, default=200)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``contrastive data triplets``; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        args.pairs = [m for group in args.pairs or [["field"]] for m in group]
        return run(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
