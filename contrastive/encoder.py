"""The encoder a training run leaves: a backbone with its normalisation, and its folder.

:func:`load_encoder` reads a folder written by ``contrastive export`` (:mod:`contrastive.export`):
``config.json`` (registry name and kwargs, mean, std, image size, ...) and
``backbone.safetensors``. It is data only: the backbone is built by its registry name, and
nothing the files name is imported.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file
from torch import Tensor, nn

from contrastive.augment import Augment
from contrastive.backbones import Preprocessing, UnknownBackboneError, create_backbone, load_state

VERSION = 1  # of config.json
CONFIG = "config.json"
FILES = {"backbone": "backbone.safetensors", "clip": "clip.safetensors", "onnx": "encoder.onnx"}
# backbone_kwargs naming where weights come from, which the exported weights replace.
WEIGHT_KWARGS = ("pretrained", "checkpoint", "pretrained_cfg", "pretrained_cfg_overlay")


class ExportError(RuntimeError):
    """A user mistake or an encoder that cannot be exported, reported as one line."""


class Encoder(nn.Module):
    """A backbone with the normalisation its weights expect: uint8 images in, features out.

    What :func:`load_encoder` returns; also how a registry backbone is embedded with as it is
    (``contrastive similar --compare_ckpt timm:NAME``).

    Args:
        backbone: normalised float images ``(B, C, H, W)`` -> ``(B, num_features)``.
        preprocessing: its mean, std and image size; ``backbone.preprocessing`` by default.
    """

    def __init__(self, backbone: nn.Module, preprocessing: Preprocessing | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.preprocessing = preprocessing or backbone.preprocessing
        self.normalization = Augment(mean=self.preprocessing.mean, std=self.preprocessing.std)
        self.num_features = int(backbone.num_features)

    @property
    def mean(self) -> tuple[float, ...]:
        return self.preprocessing.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.preprocessing.std

    @property
    def image_size(self) -> int | None:
        """The side it was trained at (images are not resized here); ``None``: unknown."""
        return self.preprocessing.image_size

    def forward(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` uint8 (or float in [0, 1]) -> ``(B, num_features)``."""
        return self.backbone(self.normalization.normalize(images))

    def embed(self, images: Tensor) -> Tensor:
        """The features a method's ``embed`` gives: ``(B, C, H, W)`` uint8 -> ``(B, D)``."""
        return self(images)


def load_encoder(path: str | os.PathLike) -> Encoder:
    """The encoder exported to the folder ``path``, in eval mode on the CPU.

    Raises:
        ExportError: one line naming the file and field that is missing or wrong.
    """
    folder = Path(path).expanduser()
    config = read_config(folder)
    if "backbone" not in config["files"]:
        raise ExportError(f"{folder} holds an ONNX export ({FILES['onnx']}): use onnxruntime")
    kwargs = config["backbone_kwargs"]
    try:
        backbone = create_backbone(config["backbone"], **kwargs)
    except (UnknownBackboneError, TypeError, ValueError) as err:
        raise ExportError(f"{folder / CONFIG}: backbone: {err}") from None
    weights = folder / config["files"]["backbone"]
    if not weights.is_file():
        raise ExportError(f"{weights}: not found (named by {folder / CONFIG})")
    try:
        state = load_file(weights)
    except Exception as err:  # safetensors' errors have no common type
        raise ExportError(f"{weights}: not a safetensors file: {err}") from None
    try:
        load_state(backbone, state, str(weights), f"backbone '{config['backbone']}'")
    except RuntimeError as err:
        raise ExportError(str(err)) from None
    size = config["image_size"]
    return Encoder(backbone, Preprocessing.of(config["mean"], config["std"], size)).eval()


def read_config(folder: Path) -> dict:
    """``folder/config.json``, checked field by field."""
    path = folder / CONFIG
    if not path.is_file():
        raise ExportError(f"{path}: not found; is {folder} a folder written by contrastive export?")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ExportError(f"{path}: not JSON: {err}") from None
    checks = {
        "version": lambda v: v == VERSION,
        "backbone": lambda v: isinstance(v, str),
        "backbone_kwargs": lambda v: isinstance(v, dict) and not set(v) & set(WEIGHT_KWARGS),
        "mean": lambda v: isinstance(v, list) and all(isinstance(x, (int, float)) for x in v),
        "std": lambda v: isinstance(v, list) and all(isinstance(x, (int, float)) and x for x in v),
        "image_size": lambda v: v is None or (isinstance(v, int) and v > 0),
        "files": lambda v: isinstance(v, dict) and set(v) <= set(FILES) and bool(v),
    }
    for key, ok in checks.items():
        if not isinstance(config, dict) or key not in config:
            raise ExportError(f"{path}: no field '{key}'")
        if not ok(config[key]):
            raise ExportError(f"{path}: field '{key}' is not valid: {config[key]!r}")
    if len(config["mean"]) != len(config["std"]):
        raise ExportError(f"{path}: 'mean' and 'std' need one value per channel")
    return config
