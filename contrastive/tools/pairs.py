"""The images ``contrastive data triplets`` pairs, and its three ways of pairing them.

Images come from a class-folder tree (:func:`read_class_folders`, the field ``class``) and/or
a metadata table (:func:`read_metadata`, its columns as fields); :func:`collect` merges them,
one :class:`Item` per real file. The pair modes (:func:`field_pairs`, :func:`random_pairs`,
:func:`neighbor_pairs`) draw distinct pairs with a seeded RNG and return :class:`Triplet` rows
of item indices; :func:`manifest_rows` turns them into the manifest's JSON rows.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from contrastive.files import TableError, read_rows, scan_images
from contrastive.tools.describe import Description

DEFAULT_TEMPLATES = ("same {field}", "they share a {field}", "both have {field} {value}")
FOLDER_FIELD = "class"


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
    """The images of ``root/<class>/...`` (any depth, links followed once, each real file
    once: :func:`contrastive.files.scan_images`), each with the field ``class``."""
    if not root.is_dir():
        raise InputError(f"--images {root}: no such folder")
    items = []
    for path in scan_images(root).images:
        parts = path.relative_to(root).parts
        if len(parts) > 1:  # images directly in root belong to no class
            items.append(Item(path, {FOLDER_FIELD: parts[0]}))
    if not items:
        raise InputError(f"--images {root}: no images in class folders ({root}/<class>/<image>)")
    return items


def read_metadata(path: Path, path_column: str = "path") -> tuple[list[Item], list[str]]:
    """The images a metadata table (CSV, TSV or JSONL, UTF-8) names, with its other columns as
    fields.

    Returns:
        The items in file order, and one reason per skipped row (``"malformed row"``,
        ``"no image path"``, ``"missing image"``).
    """
    if not path.is_file():
        raise InputError(f"--metadata {path}: no such file")
    try:
        rows = [row for _, row in read_rows(path)]
    except TableError as err:
        raise InputError(f"--metadata {err}") from None
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


def parse_templates(specs: Sequence[str], known: set[str]) -> dict[str, list[str]]:
    """Every known field's templates: the defaults, or those of ``--template FIELD=TEXT``
    (``specs``)."""
    given: dict[str, list[str]] = {}
    for spec in specs:
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
    describe: Callable[[list[tuple[Path, Path]]], list[Description]] | None = None,
) -> tuple[list[Triplet], list[str]]:
    """Up to ``n`` distinct uniform pairs; their text from ``describe`` (a row per phrase) or
    else from one of ``fields`` they share.

    Args:
        describe: Describes a list of image pairs, in order (see
            :func:`contrastive.tools.describe.describe_pairs`).

    Returns:
        The triplets, and one reason per pair that made no row.
    """
    count = len(items)

    def draw() -> tuple[int, int]:
        a, b = rng.sample(range(count), 2)
        return (a, b) if a < b else (b, a)

    pairs = _unique(draw, min(n, count * (count - 1) // 2), _attempts(n))
    triplets, skipped = [], []
    if describe is not None:
        descriptions = describe([(items[a].path, items[b].path) for a, b in pairs])
        for (a, b), description in zip(pairs, descriptions, strict=True):
            if not description.phrases:
                skipped.append(description.reason or "not described")
            triplets += [Triplet(a, b, phrase, "described") for phrase in description.phrases]
        return triplets, skipped
    for a, b in pairs:
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
