"""How the built-in shapes are drawn: the factors, their fine values, captions and the renderer.

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
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

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
NUM_FINE = {
    "shape": 0,
    "color": 0,
    "size": 1,
    "position": 2,
    "rotation": 1,
    "background": 0,
    "texture": 2,
}


class Factor(NamedTuple):
    """One factor of an image: its discrete class and its continuous value inside the class.

    Attributes:
        label: The class index, in ``range(len(CLASS_NAMES[attribute]))``.
        fine: The continuous values (see the module docstring); empty where there are none.
    """

    label: int
    fine: tuple[float, ...]


def fine_values(attribute: str, label: int, uniforms: np.ndarray) -> tuple[float, ...]:
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
