"""What ``benchmarks/throughput.py`` trains: the image methods, their recipes per device, the
images, and the device's bf16 peak (for MFU)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.data import Dataset

from contrastive.methods import ContrastiveMethod, image_methods

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# lightly's CIFAR-10 examples: plain SGD; the same optimizer everywhere so that only the
# framework differs (momentum gives it state, as in any real run).
OPTIMIZER = functools.partial(torch.optim.SGD, lr=0.06, momentum=0.9, weight_decay=5e-4)
# bf16 dense peak in TFLOP/s (NVIDIA data sheets), for MFU; --peak-tflops overrides. Matched
# against the device name in this order, so that "A100" is not read as "A10", nor "L40S" as "L4".
PEAK_TFLOPS = {
    "H100 PCIe": 756.0, "H100 NVL": 835.0, "GH200": 989.0, "H200": 989.0, "H100": 989.0,
    "B200": 2250.0, "A100": 312.0, "A10G": 70.0, "A10": 125.0, "L40S": 362.0, "L40": 181.0,
    "L4": 121.0,
}  # fmt: skip


# Every image method of contrastive.methods, by its module's name: simclr, moco_v3, dino, ...
IMAGE_METHODS: dict[str, type[ContrastiveMethod]] = image_methods()
# Local views of the methods whose papers train with multi-crop (2 global views besides).
MULTI_CROP = {"dino": 8, "swav": 6}


# ---- what is trained: model, views and data, per method and device ------------------------


@dataclass(frozen=True)
class Spec:
    """One method on one device: the model, its views and the batch.

    ``jitter`` is (brightness, contrast, saturation, hue); ``blur`` and ``solarize`` are the
    probabilities of lightly's first and second view (BYOL's views differ; ours share one
    distribution, so they get the mean probability: the same work per view on average).
    ``hidden == 0``: the method's own heads; ``local_views``: multi-crop's local views (at
    ``local_size`` px); ``method_kwargs``: further arguments of the method (they win).
    """

    method: str
    device: torch.device
    batch: int
    backbone: str
    small_stem: bool
    size: int
    hidden: int
    out: int
    predictor_hidden: int = 0
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    blur: tuple[float, float] = (0.0, 0.0)
    solarize: tuple[float, float] = (0.0, 0.0)
    local_views: int = 0
    local_size: int = 96  # px: the local views' side at 224 px in both papers
    method_kwargs: dict = field(default_factory=dict)


_RESNET18_32PX = dict(backbone="resnet18", small_stem=True, size=32)
_RESNET50_224PX = dict(backbone="resnet50", small_stem=False, size=224)
_BYOL_JITTER = (0.4, 0.4, 0.2, 0.1)
# lightly's documented recipe per (method, device type). CPU, 32 px: lightly's CIFAR-10
# examples (SimCLR: cj_strength=0.5 and no blur; BYOL: its view transforms with
# gaussian_blur=0.0; heads 512-512-128 and 512-1024-256). CUDA, 224 px: the transforms' and
# heads' defaults, the papers' ImageNet recipes.
RECIPES = {
    ("simclr", "cpu"): dict(**_RESNET18_32PX, hidden=512, out=128),
    ("byol", "cpu"): dict(
        **_RESNET18_32PX, hidden=1024, out=256, predictor_hidden=1024, jitter=_BYOL_JITTER,
        solarize=(0.0, 0.2),
    ),
    ("simclr", "cuda"): dict(
        **_RESNET50_224PX, hidden=2048, out=128, jitter=(0.8, 0.8, 0.8, 0.2), blur=(0.5, 0.5)
    ),
    ("byol", "cuda"): dict(
        **_RESNET50_224PX, hidden=4096, out=256, predictor_hidden=4096, jitter=_BYOL_JITTER,
        blur=(1.0, 0.1), solarize=(0.0, 0.2),
    ),
}  # fmt: skip


# Every other method: its own heads, SimCLR's ImageNet views on the GPU, multi-crop per MULTI_CROP.
OTHER_RECIPES = {
    "cpu": dict(**_RESNET18_32PX, hidden=0, out=0),
    "cuda": dict(**_RESNET50_224PX, hidden=0, out=0, jitter=(0.8, 0.8, 0.8, 0.2), blur=(0.5, 0.5)),
}


def make_spec(method: str, device: torch.device, batch: int) -> Spec:
    if (method, device.type) in RECIPES:
        return Spec(method, device, batch, **RECIPES[method, device.type])
    if method not in IMAGE_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(IMAGE_METHODS)}")
    kwargs = {"label": "class"} if method == "supcon" else {}  # UInt8Images' labels
    recipe = OTHER_RECIPES[device.type]
    local = dict(local_views=MULTI_CROP.get(method, 0), local_size=recipe["size"] * 96 // 224)
    return Spec(method, device, batch, **recipe, **local, method_kwargs=kwargs)


def make_images(spec: Spec, count: int) -> Tensor:
    """``(count, 3, S, S)`` uint8 noise: augmentation and model cost do not depend on content."""
    generator = torch.Generator().manual_seed(0)
    shape = (count, 3, spec.size, spec.size)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)


class UInt8Images(Dataset):
    """``{"image": (3, S, S) uint8, "labels": {"class": int}}`` samples, as the project's data
    modules yield them (10 classes, for SupCon)."""

    def __init__(self, images: Tensor, length: int) -> None:
        self.images, self.length = images, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index % len(self.images)], "labels": {"class": index % 10}}


def peak_flops(device: torch.device, override: float | None) -> float | None:
    """The device's bf16 dense peak in FLOP/s, if known (``--peak-tflops`` overrides)."""
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_TFLOPS.items():  # most specific first
        if key in name:
            return tflops * 1e12
    return None
