"""The built-in generated dataset: one shape on a textured background, with known attributes.

Every image is drawn deterministically from ``(seed, split, index)``; nothing is downloaded.
Seven discrete factors (``ATTRIBUTES``) make each image, most with a continuous fine value
(jitter) inside its class:

==========  ==================================================  ======================
factor      classes (``CLASS_NAMES``)                           fine (``Factor.fine``)
==========  ==================================================  ======================
shape       circle, square, triangle, star, cross, heart        none
color       8 bright object colors                              none
size        small, medium, large                                ``(radius,)``
position    top left, top right, bottom left, bottom right      ``(x, y)``
rotation    4 bins over [0, 90) degrees                         ``(degrees,)``
background  5 dark colors, disjoint from the object colors      none
texture     plain, striped, dotted, checkered                   ``(phase_x, phase_y)``
==========  ==================================================  ======================

Coordinates are normalised: the image spans ``[-1, 1]`` on both axes, ``y`` pointing down, so
the same factors render the same picture at any ``image_size``. ``radius`` is the shape's
scale (about its circumradius) in these units. Rotation is counter-clockwise on screen and
drawn from the central 2/3 of each 22.5 degree bin, so neighbouring bins never touch. It is
meaningless for the circle (every bin looks alike) and partly ambiguous for the star, whose
72 degree symmetry makes bin 3 (about 79 degrees) look like bin 0 (about 11 degrees).

Edges are anti-aliased analytically: each pixel's coverage is ``clip(0.5 - d / pixel, 0, 1)``
with ``d`` the signed distance to the boundary at the pixel centre. Along straight edges that
is what box-filter supersampling converges to, at the cost of one evaluation per pixel, which
keeps ``__getitem__`` in the thousands of items per second on one core.

Views made by the generator: with ``shared_factors`` set, every item carries a second image of
the same factors for the shared ones (class and fine value) and every other factor re-drawn to
a different class, with fresh jitter. Which object a view shows is re-drawn on every fetch, so
each epoch sees new views; see :meth:`ShapesDataset.view_factors` for the RNG.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from contrastive.datamodules.common import BankQueryDataModule, Tokenizer

ATTRIBUTES: tuple[str, ...] = (
    "shape",
    "color",
    "size",
    "position",
    "rotation",
    "background",
    "texture",
)

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    # A heart rather than a hexagon: at the smallest size a hexagon differs from a circle by
    # half a pixel, the heart's point and notch stay visible.
    "shape": ("circle", "square", "triangle", "star", "cross", "heart"),
    "color": ("red", "green", "blue", "yellow", "purple", "orange", "white", "cyan"),
    "size": ("small", "medium", "large"),
    "position": ("top left", "top right", "bottom left", "bottom right"),
    # Named by the centre of each 22.5 degree bin.
    "rotation": ("11 degrees", "34 degrees", "56 degrees", "79 degrees"),
    "background": ("black", "navy", "maroon", "dark green", "dark gray"),
    "texture": ("plain", "striped", "dotted", "checkered"),
}

SPLITS: tuple[str, ...] = ("train", "val", "test")

_OBJECT_RGB = np.array(
    [
        (230, 30, 40),  # red
        (40, 200, 70),  # green
        (50, 100, 255),  # blue
        (255, 225, 40),  # yellow
        (170, 70, 235),  # purple
        (255, 140, 0),  # orange
        (245, 245, 245),  # white
        (0, 220, 230),  # cyan
    ],
    dtype=np.float32,
)
_BACKGROUND_RGB = np.array(
    [
        (10, 10, 10),  # black
        (15, 20, 80),  # navy
        (80, 10, 20),  # maroon
        (10, 60, 25),  # dark green
        (60, 60, 60),  # dark gray
    ],
    dtype=np.float32,
)
# Texture marks are a lighter shade of the background, still far darker than any object.
_TEXTURE_SHADE = 45.0

# Geometry in normalised units (the image spans [-1, 1]).
_SIZE_RADIUS = (0.28, 0.38, 0.48)  # shape scale per size class
_SIZE_JITTER = 0.025  # uniform +-, leaves a 0.05 gap between classes
_POSITION_CENTRE = 0.45  # region centres at (+-0.45, +-0.45)
_POSITION_JITTER = 0.08  # uniform +- per axis: at worst a large star's tip leaves by ~2 px of 32
_ROTATION_BIN = 22.5  # degrees
_ROTATION_JITTER = 7.5  # uniform +- around the bin centre: 7.5 degree gap between bins
_TEXTURE_PERIOD = 0.3  # pattern period (about 5 px at 32 px)

# How many continuous values each factor carries (see the table above).
_NUM_FINE = {
    "shape": 0,
    "color": 0,
    "size": 1,
    "position": 2,
    "rotation": 1,
    "background": 0,
    "texture": 2,
}
_VIEW_STREAM = 1  # spawn key that separates view randomness from the image streams


class Factor(NamedTuple):
    """One factor of an image: its discrete class and its continuous value inside the class.

    Attributes:
        label: The class index, in ``range(len(CLASS_NAMES[attribute]))``.
        fine: The continuous values (see the module docstring); empty where there are none.
    """

    label: int
    fine: tuple[float, ...]


def _fine_values(attribute: str, label: int, uniforms: np.ndarray) -> tuple[float, ...]:
    """Map uniforms in ``[0, 1)`` to the fine value of ``attribute`` inside class ``label``."""
    u = [2.0 * float(x) - 1.0 for x in uniforms]  # in [-1, 1)
    if attribute == "size":
        return (_SIZE_RADIUS[label] + _SIZE_JITTER * u[0],)
    if attribute == "position":
        sx = 1.0 if label % 2 else -1.0  # right / left
        sy = 1.0 if label >= 2 else -1.0  # bottom / top (y points down)
        return (
            sx * _POSITION_CENTRE + _POSITION_JITTER * u[0],
            sy * _POSITION_CENTRE + _POSITION_JITTER * u[1],
        )
    if attribute == "rotation":
        return ((label + 0.5) * _ROTATION_BIN + _ROTATION_JITTER * u[0],)
    if attribute == "texture":
        return (float(uniforms[0]), float(uniforms[1]))
    return ()


def view_rng(torch_seed: int) -> np.random.Generator:
    """The generator a dataset draws its views from in a process whose torch seed is given.

    Its seed sequence carries a spawn key, so it never repeats an image stream
    ``[seed, split, index]`` (numpy pads short entropy with zeros: ``default_rng(s)`` alone
    would equal image 0 of the train split of seed ``s``).
    """
    return np.random.default_rng(np.random.SeedSequence(torch_seed, spawn_key=(_VIEW_STREAM,)))


def check_factor_names(names: Sequence[str]) -> None:
    """Raise ``ValueError`` naming any entry of ``names`` that is not in ``ATTRIBUTES``."""
    if isinstance(names, str):
        raise TypeError(f"expected a list of factor names, got the string {names!r}")
    unknown = [name for name in names if name not in ATTRIBUTES]
    if unknown:
        raise ValueError(
            f"unknown factor(s) {unknown} in shared_factors; valid factors are {list(ATTRIBUTES)}"
        )


def caption(factors: Mapping[str, Factor], named: Sequence[str] = ATTRIBUTES) -> str:
    """Describe an image in words, naming the class of each attribute in ``named``.

    With every attribute: ``a small red star at the top left, rotated 11 degrees, on a striped
    navy background``. Attributes left out are left unsaid: ``a red star``, ``a small shape on
    a striped background``. Every caption starts with "a" and names the object.
    """
    name = {attr: CLASS_NAMES[attr][factors[attr].label] for attr in named}
    words = [name.get("size"), name.get("color"), name.get("shape", "shape")]
    text = "a " + " ".join(w for w in words if w)
    if "position" in name:
        text += f" at the {name['position']}"
    if "rotation" in name:
        text += f", rotated {name['rotation']}"
    if "texture" in name or "background" in name:
        surface = " ".join(w for w in (name.get("texture"), name.get("background")) if w)
        text += f", on a {surface} background"
    return text


# ----------------------------------------------------------------------------- rendering

_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _grid(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in normalised units, each ``(H, W)`` float32 (cached)."""
    if image_size not in _GRIDS:
        c = ((np.arange(image_size, dtype=np.float32) + 0.5) / image_size) * 2.0 - 1.0
        _GRIDS[image_size] = (c[None, :].repeat(image_size, 0), c[:, None].repeat(image_size, 1))
    return _GRIDS[image_size]


def _shape_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) to a unit-scale shape in its own frame, ``v`` down.

    Exact for the circle, the distance to the nearest edge line elsewhere (exact along edges,
    where anti-aliasing needs it, slightly small near corners).
    """
    if shape == "circle":
        return np.sqrt(u * u + v * v) - 0.9
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.75
    if shape == "triangle":
        # Equilateral, apex up, circumradius 1.15: three edge lines at the apothem.
        apothem = 0.575
        s, c = math.sin(2 * math.pi / 3), math.cos(2 * math.pi / 3)
        d = np.maximum(v, c * v + s * u)
        return np.maximum(d, c * v - s * u) - apothem
    if shape == "star":
        # Five points, one up. Fold the plane into the wedge between a tip (angle 0) and the
        # next inner vertex (angle pi/5); there the boundary is one segment.
        outer, inner, half = 1.15, 0.52, math.pi / 5
        r = np.sqrt(u * u + v * v)
        t = np.arctan2(u, -v)  # angle from "up"
        t = np.abs(np.mod(t + half, 2 * half) - half)  # (H, W) in [0, pi/5]
        qx, qy = r * np.cos(t), r * np.sin(t)
        dx, dy = inner * math.cos(half) - outer, inner * math.sin(half)  # tip -> inner vertex
        norm = math.hypot(dx, dy)
        nx, ny = dy / norm, -dx / norm  # outward normal
        return nx * (qx - outer) + ny * qy
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        arm, width = 1.0, 0.34
        return np.minimum(np.maximum(au - arm, av - width), np.maximum(au - width, av - arm))
    if shape == "heart":
        # Inigo Quilez's heart distance (tip at the origin, lobes up to y ~ 1.1, y up),
        # centred on its middle and scaled to about unit extent.
        k = 0.64
        px = np.abs(u) * k
        py = 0.55 - v * k
        lobe = np.sqrt((px - 0.25) ** 2 + (py - 0.75) ** 2) - math.sqrt(2.0) / 4.0
        m = 0.5 * np.maximum(px + py, 0.0)
        point = np.sqrt(np.minimum(px * px + (py - 1.0) ** 2, (px - m) ** 2 + (py - m) ** 2))
        point = point * np.sign(px - py)
        return np.where(px + py > 1.0, lobe, point) / k
    raise ValueError(f"unknown shape {shape!r}; expected one of {CLASS_NAMES['shape']}")


def _coverage(distance: np.ndarray, pixel: float) -> np.ndarray:
    """Fraction of each pixel inside the boundary, from the signed distance at its centre."""
    return np.clip(0.5 - distance / pixel, 0.0, 1.0)


def _texture_coverage(
    texture: str, x: np.ndarray, y: np.ndarray, phase: tuple[float, ...], pixel: float
) -> np.ndarray | None:
    """Coverage ``(H, W)`` of the texture marks, or ``None`` for a plain background."""
    p = _TEXTURE_PERIOD
    if texture == "plain":
        return None
    if texture == "striped":
        # Diagonal stripes, half the period wide.
        s = (x + y) * (1.0 / (p * math.sqrt(2.0))) + phase[0]
        return _coverage((np.abs(s - np.floor(s) - 0.5) - 0.25) * p, pixel)
    if texture == "dotted":
        fx = x * (1.0 / p) + phase[0]
        fy = y * (1.0 / p) + phase[1]
        dx = fx - np.floor(fx) - 0.5
        dy = fy - np.floor(fy) - 0.5
        return _coverage((np.sqrt(dx * dx + dy * dy) - 0.25) * p, pixel)
    if texture == "checkered":
        fx = x * (1.0 / p) + phase[0]
        fy = y * (1.0 / p) + phase[1]
        cx = _coverage((np.abs(fx - np.floor(fx) - 0.5) - 0.25) * p, pixel)
        cy = _coverage((np.abs(fy - np.floor(fy) - 0.5) - 0.25) * p, pixel)
        return cx + cy - 2.0 * cx * cy  # soft XOR
    raise ValueError(f"unknown texture {texture!r}; expected one of {CLASS_NAMES['texture']}")


def render(factors: Mapping[str, Factor], image_size: int = 32) -> np.ndarray:
    """Draw the image that ``factors`` describe.

    Args:
        factors: A :class:`Factor` for every name in ``ATTRIBUTES``.
        image_size: Height and width in pixels.

    Returns:
        The image, a ``(3, H, W)`` uint8 array (channels first, like the dataset's tensors).
    """
    missing = [attr for attr in ATTRIBUTES if attr not in factors]
    if missing:
        raise ValueError(f"factors lack {missing}; expected every one of {list(ATTRIBUTES)}")
    x, y = _grid(image_size)  # (H, W) each
    pixel = 2.0 / image_size

    background = _BACKGROUND_RGB[factors["background"].label][:, None, None]  # (3, 1, 1)
    texture = factors["texture"]
    marks = _texture_coverage(CLASS_NAMES["texture"][texture.label], x, y, texture.fine, pixel)
    if marks is None:
        image = np.broadcast_to(background, (3, image_size, image_size))
    else:
        image = background + _TEXTURE_SHADE * marks[None]  # (3, H, W)

    (radius,) = factors["size"].fine
    cx, cy = factors["position"].fine
    (degrees,) = factors["rotation"].fine
    # Counter-clockwise on screen: with y down, the frame turns by -angle in (x, y).
    angle = math.radians(degrees)
    cos, sin = math.cos(angle) / radius, math.sin(angle) / radius
    dx, dy = x - cx, y - cy
    u = cos * dx - sin * dy  # (H, W), shape frame in units of radius
    v = sin * dx + cos * dy
    distance = _shape_distance(CLASS_NAMES["shape"][factors["shape"].label], u, v) * radius
    mask = _coverage(distance, pixel)[None]  # (1, H, W)

    color = _OBJECT_RGB[factors["color"].label][:, None, None]  # (3, 1, 1)
    image = image + (color - image) * mask  # (3, H, W)
    return (image + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------- dataset


class ShapesDataset(Dataset):
    """Generated images of one shape on a textured background, with their factors.

    Item ``i`` is drawn from ``np.random.default_rng([seed, split_id, i])``, so it depends on
    ``(seed, split, i)`` only: two instances agree byte for byte, and the splits never share a
    random stream.

    Each item is a dict:

    - ``"image"``: ``(3, H, W)`` uint8 tensor.
    - ``"labels"``: ``{attribute: int}`` for every attribute in ``ATTRIBUTES``.
    - ``"caption"``: a sentence naming every attribute's class (see :func:`caption`).
    - ``"index"``: ``i``.
    - ``"view"``: ``(3, H, W)`` uint8 tensor, only when ``shared_factors`` is not ``None``: the
      shared factors of the image kept exactly, every other one re-drawn to another class;
      with its ``"view_caption"``.

    Args:
        num_samples: Number of items.
        image_size: Height and width in pixels, at least 16.
        seed: Non-negative seed of the image stream.
        split: One of ``"train"``, ``"val"``, ``"test"``.
        shared_factors: Factors a generator view keeps; ``None`` for no view. ``[]`` makes a
            view that shares nothing with its image.
        caption_dropout: Probability that the caption leaves out each attribute, drawn anew
            on every fetch (like the views). Partial captions ("a red star") make an
            image-text model learn each attribute on its own: with full captions, the easy
            attributes alone tell the captions of a batch apart.
    """

    def __init__(
        self,
        num_samples: int,
        image_size: int = 32,
        seed: int = 0,
        split: str = "train",
        shared_factors: list[str] | None = None,
        caption_dropout: float = 0.0,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16 pixels, got {image_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0 (a numpy seed), got {seed}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if shared_factors is not None:
            check_factor_names(shared_factors)
        if not 0.0 <= caption_dropout < 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1), got {caption_dropout}")
        self.caption_dropout = caption_dropout
        self.num_samples = num_samples
        self.image_size = image_size
        self.seed = seed
        self.split = split
        self.shared_factors = None if shared_factors is None else tuple(shared_factors)
        self._split_id = SPLITS.index(split)
        self._high = np.array([len(CLASS_NAMES[attr]) for attr in ATTRIBUTES])
        self._rng: np.random.Generator | None = None
        self._rng_key: tuple[int, int] | None = None

    @property
    def num_classes(self) -> dict[str, int]:
        """Number of classes of each attribute."""
        return {attr: len(CLASS_NAMES[attr]) for attr in ATTRIBUTES}

    def __len__(self) -> int:
        return self.num_samples

    def factors(self, index: int) -> dict[str, Factor]:
        """The factors of image ``index``, a deterministic function of ``(seed, split, index)``."""
        rng = np.random.default_rng([self.seed, self._split_id, index])
        labels = rng.integers(0, self._high)  # (7,)
        uniforms = rng.random(sum(_NUM_FINE.values()))
        out, start = {}, 0
        for attr, label in zip(ATTRIBUTES, labels.tolist(), strict=True):
            n = _NUM_FINE[attr]
            out[attr] = Factor(label, _fine_values(attr, label, uniforms[start : start + n]))
            start += n
        return out

    def view_factors(
        self, factors: Mapping[str, Factor], rng: np.random.Generator
    ) -> dict[str, Factor]:
        """The factors of a generator view of the image with ``factors``.

        Shared factors are kept as they are; every other one gets a class different from the
        image's, drawn uniformly from the others, and new fine values.

        ``__getitem__`` passes ``view_rng(torch.initial_seed())``, made the first time it needs
        one in a process (again if the torch seed changes) and then drawn on, so views are fresh
        on every fetch, differ between DataLoader workers (each has its own torch seed) and
        repeat under ``lightning.seed_everything(seed, workers=True)``.

        Raises:
            RuntimeError: If the dataset was made without ``shared_factors``.
        """
        if self.shared_factors is None:
            raise RuntimeError("this dataset makes no views: it was built with shared_factors=None")
        out = {}
        for attr in ATTRIBUTES:
            if attr in self.shared_factors:
                out[attr] = factors[attr]
                continue
            n = len(CLASS_NAMES[attr])
            label = (factors[attr].label + int(rng.integers(1, n))) % n
            out[attr] = Factor(label, _fine_values(attr, label, rng.random(_NUM_FINE[attr])))
        return out

    def _view_rng(self) -> np.random.Generator:
        """This process's generator for views, made again in a new process or torch seed."""
        key = (os.getpid(), torch.initial_seed())
        if self._rng is None or self._rng_key != key:
            self._rng = view_rng(key[1])
            self._rng_key = key
        return self._rng

    def _captioned(self) -> tuple[str, ...]:
        if self.caption_dropout == 0:
            return ATTRIBUTES
        keep = self._view_rng().random(len(ATTRIBUTES)) >= self.caption_dropout  # (7,)
        return tuple(a for a, k in zip(ATTRIBUTES, keep, strict=True) if k)

    def _checked_index(self, index: int) -> int:
        """``index`` in ``[0, num_samples)``, negative ones counted from the end."""
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        return int(index) % self.num_samples

    def __getitem__(self, index: int) -> dict:
        index = self._checked_index(index)
        factors = self.factors(index)
        item = {
            "image": torch.from_numpy(render(factors, self.image_size)),
            "labels": {attr: f.label for attr, f in factors.items()},
            "caption": caption(factors, named := self._captioned()),
            "index": index,
        }
        if self.shared_factors is not None:
            view = self.view_factors(factors, self._view_rng())
            item["view"] = torch.from_numpy(render(view, self.image_size))
            # The same attributes said: the two captions differ only where the images do.
            item["view_caption"] = caption(view, named)
        return item


# ----------------------------------------------------------------------------- datamodule


class ShapesDataModule(BankQueryDataModule):
    """The built-in dataset: generated shapes with known attributes, nothing to download.

    Validation and test return two loaders, ``[bank, query]``: ``bank`` is the first
    ``min(num_bank, num_train)`` train images without views (a kNN memory bank, labels
    included), ``query`` the ``"val"`` (or ``"test"``) split. ``predict`` uses the test query.

    Args:
        image_size: Height and width in pixels, at least 16.
        num_train: Train images; a train epoch is ``num_train // batch_size`` batches.
        num_val: Validation query images.
        num_test: Test query images (also the predict set).
        num_bank: kNN memory-bank images taken from the start of the train split.
        seed: Seed of every split's image stream (views follow the torch seed instead).
        shared_factors: Factors the train view shares with its image (see
            :class:`ShapesDataset`); ``None`` for no generator view.
        caption_dropout: Probability that a train caption leaves out each attribute (see
            :class:`ShapesDataset`); evaluation captions always name every attribute.
        batch_size: Train batch size (the last incomplete batch is dropped).
        eval_batch_size: Batch size of the bank, validation, test and predict loaders.
        num_workers: DataLoader worker processes (kept alive between epochs when > 0).
    """

    def __init__(
        self,
        image_size: int = 32,
        num_train: int = 8192,
        num_val: int = 1024,
        num_test: int = 2048,
        num_bank: int = 4096,
        seed: int = 0,
        shared_factors: list[str] | None = None,
        caption_dropout: float = 0.0,
        batch_size: int = 256,
        eval_batch_size: int = 512,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16 pixels, got {image_size}")
        for name, value in (
            ("num_val", num_val),
            ("num_test", num_test),
            ("num_bank", num_bank),
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_train < batch_size:
            raise ValueError(
                f"num_train ({num_train}) must be >= batch_size ({batch_size}): the train loader "
                "drops the last incomplete batch, so it would yield no batch at all"
            )
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0 (a numpy seed), got {seed}")
        if shared_factors is not None:
            check_factor_names(shared_factors)
        self.save_hyperparameters()
        self.image_size = image_size
        self.num_train = num_train
        self.num_val = num_val
        self.num_test = num_test
        self.num_bank = min(num_bank, num_train)
        self.seed = seed
        self.shared_factors = shared_factors
        self.caption_dropout = caption_dropout
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self._datasets: dict[str, ShapesDataset] = {}
        self.tokenizer: Tokenizer | None = None  # set by methods that read captions (CLIP)

    @property
    def attributes(self) -> tuple[str, ...]:
        """The attribute names, in label order."""
        return ATTRIBUTES

    @property
    def num_classes(self) -> dict[str, int]:
        """Number of classes of each attribute."""
        return {attr: len(CLASS_NAMES[attr]) for attr in ATTRIBUTES}

    @property
    def class_names(self) -> dict[str, tuple[str, ...]]:
        """Human-readable class names of each attribute (for captions and prompts)."""
        return dict(CLASS_NAMES)

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets (generated lazily per item, so all are built whatever the stage)."""
        common = {"image_size": self.image_size, "seed": self.seed}
        self._datasets = {
            "train": ShapesDataset(
                self.num_train,
                split="train",
                shared_factors=self.shared_factors,
                caption_dropout=self.caption_dropout,
                **common,
            ),
            "bank": ShapesDataset(self.num_bank, split="train", **common),
            "val": ShapesDataset(self.num_val, split="val", **common),
            "test": ShapesDataset(self.num_test, split="test", **common),
        }
