"""Training throughput of our methods: SimCLR and BYOL against a plain loop and lightly, and more.

Images per second of a full training step (two augmented views per image, forward, backward,
optimizer step, BYOL's EMA) on uint8 images held in memory, for three implementations:

- ``lightning``: our ``SimCLR`` / ``BYOL`` LightningModule driven by ``lightning.Trainer.fit``;
- ``plain``: a plain PyTorch loop over the same modules (model, augmentation, loss, optimizer):
  the gap to ``lightning`` is Lightning's overhead;
- ``lightly``: lightly's documented recipe (its transforms on PIL images in DataLoader workers,
  its heads and losses, a torchvision ResNet adapted the same way) in a plain loop.

Each implementation is also timed in parts: the data pipeline alone (loader and augmentation,
no model) and the model step alone (on views made once). Every other image method of
``contrastive.methods`` (``--methods moco_v3,dino,...``) gets the Lightning rows alone, with its
own heads (the papers' ImageNet defaults) and multi-crop where its paper uses it (DINO: 2 global
and 8 local views, SwAV: 2 and 6). Two settings: (a) equal settings,
everything float32; (b) our defaults (bf16-mixed autocast and channels-last where the device
has bf16, else float32 channels-last) against lightly's documented defaults (float32).
Configurations run round-robin, ``--repeats`` times each; the table gives medians.

CPU: ResNet-18 with the 32 px stem, 32 px images. ``--device cuda``: ResNet-50 at 224 px, plus
torch.compile variants, and MFU: the FLOPs of one training step counted by
``torch.utils.flop_counter.FlopCounterMode`` (forward, backward and any momentum encoder's
forward; elementwise work is not counted) against the GPU's bf16 dense peak (``PEAK_TFLOPS``,
read from the device name; ``--peak-tflops`` overrides). lightly is never a project
dependency: install it in a benchmark venv (benchmarks/requirements-peers.txt).

    /tmp/benchvenv/bin/python benchmarks/throughput.py           # both methods, batch 256
    /tmp/benchvenv/bin/python benchmarks/throughput.py --quick   # smoke run, a few minutes
    python benchmarks/throughput.py --quick --skip-lightly       # without lightly
    /tmp/benchvenv/bin/python benchmarks/throughput.py --device cuda --steps 20
    python benchmarks/throughput.py --device cuda --skip-lightly --methods simclr,dino,swav
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.metadata
import importlib.util
import inspect
import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from lightning.pytorch import Callback, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from contrastive import methods
from contrastive.augment import MultiCropAugment, SimCLRAugment
from contrastive.datamodules.common import Collate
from contrastive.ema import cosine_momentum, ema_update
from contrastive.methods import BYOL, MomentumMethod
from contrastive.methods.base import ContrastiveMethod

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


def _trains_on_images(cls: type) -> bool:
    """A method with a loss whose every argument has a default (CLIP and Conditional need a
    text tower, the bases have no loss)."""
    has_loss = (
        cls.training_loss is not ContrastiveMethod.training_loss
        or cls.training_embeddings is not ContrastiveMethod.training_embeddings
    )
    parameters = inspect.signature(cls).parameters.values()
    return has_loss and all(p.default is not p.empty or p.kind is p.VAR_KEYWORD for p in parameters)


# Every image method of contrastive.methods, by its module's name: simclr, moco_v3, dino, ...
IMAGE_METHODS: dict[str, type[ContrastiveMethod]] = {
    cls.__module__.rpartition(".")[2]: cls
    for cls in (getattr(methods, name) for name in methods.__all__)
    if isinstance(cls, type) and issubclass(cls, ContrastiveMethod) and _trains_on_images(cls)
}
# Local views of the methods whose papers train with multi-crop (2 global views besides).
MULTI_CROP = {"dino": 8, "swav": 6}
STEP_TIMES = ("pipeline", "model", "e2e")
ROW_SETTINGS = ("a", "b", "b-compile")  # rows are named IMPLEMENTATION-SETTING: plain-b-compile


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


class PILImages(Dataset):
    """``(PIL image, 0)`` samples from HWC uint8, as torchvision's CIFAR10 gives lightly;
    ``transform`` (set by ``LightlyDataset.from_torch_dataset``) is applied to the image."""

    def __init__(self, images: Tensor, length: int) -> None:
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()  # (N, S, S, 3)
        self.length, self.transform = length, None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple:
        from PIL import Image

        image = Image.fromarray(self.images[index % len(self.images)])
        return (image if self.transform is None else self.transform(image)), 0


# ---- timing -------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Clock:
    """Seconds from the first :meth:`tick` to the last: ``n + 1`` ticks time ``n`` steps.

    A tick marks "this batch is ready for its step" (fetched, on the device, views made), so
    ``n + 1`` ticks time ``n`` full cycles (step, then fetch and views of the next batch) in
    steady state, leaving out the loader's start, the same way for every implementation. The
    device is synchronised at the first and the last tick only, so that queued GPU work still
    overlaps the host's between them.
    """

    def __init__(self, device: torch.device) -> None:
        self.device, self.first, self.last = device, None, None

    def tick(self, last: bool = False) -> None:
        if self.first is None or last:
            _sync(self.device)
        self.last = time.perf_counter()
        self.first = self.first if self.first is not None else self.last

    @property
    def seconds(self) -> float:
        if self.first is None or self.last is None or self.last == self.first:
            raise RuntimeError("the clock needs at least two ticks")
        return self.last - self.first


class _BatchClock(Callback):
    """Ticks a :class:`_Clock` when each training batch is ready: after the transfer and the
    views (``on_after_batch_transfer``), before the step."""

    def __init__(self, device: torch.device) -> None:
        self.clock = _Clock(device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.clock.tick(last=batch_idx == trainer.num_training_batches - 1)


@dataclass
class Config:
    """One implementation in one setting: a row of the table.

    ``times`` maps a kind (``pipeline``, ``model``, ``e2e``) to a function running ``n``
    timed steps and returning their seconds; ``warmup`` runs everything once, untimed.
    """

    name: str
    setting: str
    label: str
    precision: str
    warmup: Callable[[], None]
    times: dict[str, Callable[[int], float]]
    flops_per_image: float = 0.0
    seconds: dict[str, list[float]] = field(default_factory=dict)


# ---- ours: the LightningModule in a Trainer, and in a plain loop --------------------------


def our_augment(spec: Spec) -> SimCLRAugment:
    """Our view distribution equal to lightly's (see :func:`make_spec`); multi-crop's local
    views get the same photometric transforms."""
    b, c, s, h = spec.jitter
    multi_crop = {}
    if spec.local_views:
        multi_crop = dict(num_local=spec.local_views, local_size=spec.local_size, size=spec.size)
    return (MultiCropAugment if spec.local_views else SimCLRAugment)(
        **multi_crop,
        crop_scale=(0.08, 1.0),  # lightly's min_scale
        color_jitter=0.8,
        brightness=b,
        contrast=c,
        saturation=s,
        hue=h,
        grayscale=0.2,
        blur=sum(spec.blur) / 2,
        solarize=sum(spec.solarize) / 2,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


def build_method(spec: Spec, channels_last: bool) -> ContrastiveMethod:
    """The spec's method with its backbone, heads and views, on the spec's device: SimCLR and
    BYOL with lightly's heads and layout when the spec gives them (``hidden``), any other
    image method with its own heads."""
    torch.manual_seed(0)
    common = dict(
        backbone=spec.backbone,
        backbone_kwargs={"small_stem": spec.small_stem} if "resnet" in spec.backbone else {},
        augment=our_augment(spec),
        optimizer=OPTIMIZER,
        channels_last=channels_last,
    )
    if spec.hidden and spec.method in ("simclr", "byol"):
        # One forward per view, as lightly's examples do (and BYOL's own code).
        common.update(projector_hidden_dim=spec.hidden, projector_dim=spec.out)
        common.update(separate_views=True)
        if spec.method == "byol":
            common.update(predictor_hidden_dim=spec.predictor_hidden)
    model = IMAGE_METHODS[spec.method](**{**common, **spec.method_kwargs}).to(spec.device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _compile(model: ContrastiveMethod) -> None:
    """torch.compile every network of the method in place (state_dict keys unchanged): each
    child module with parameters (backbone, heads, momentum copies), not the augmentation."""
    for name, child in model.named_children():
        if name != "augment" and next(child.parameters(), None) is not None:
            child.compile()


def our_loader(spec: Spec, images: Tensor, batches: int, workers: int) -> DataLoader:
    """The project's train loader shape: shuffled uint8 dicts, ``Collate``, pinned on CUDA."""
    return DataLoader(
        UInt8Images(images, batches * spec.batch),
        batch_size=spec.batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=spec.device.type == "cuda",
        collate_fn=Collate(),
    )


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def ours_plain(
    spec: Spec, loader: DataLoader, setting: str, bf16: bool, channels_last: bool, compiled: bool
) -> Config:
    """Our modules in a plain PyTorch loop: what Lightning runs, without Lightning."""
    model = build_method(spec, channels_last)
    if compiled:
        _compile(model)
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    optimizer = OPTIMIZER([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10**6)
    step_count = [0]

    def views_of(batch: dict) -> dict:
        """The batch as ``training_step`` gets it: on the device, with its ``views``."""
        batch = {"image": batch["image"].to(spec.device, non_blocking=True)}
        return dict(batch, views=model.make_views(batch))

    def step(batch: dict) -> None:
        with _autocast(spec.device, bf16):
            loss = model.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        step_count[0] += 1
        if isinstance(model, BYOL):  # what BYOL.on_train_batch_end does
            model.momentum = cosine_momentum(
                step_count[0], 10**6, model.base_momentum, model.final_momentum
            )
            ema_update(model.target_backbone, model.backbone, model.momentum)
            ema_update(model.target_projector, model.projector, model.momentum)

    def pipeline(n: int) -> float:
        clock = _Clock(spec.device)
        for i, batch in zip(range(n + 1), loader, strict=False):
            views_of(batch)
            clock.tick(last=i == n)
        return clock.seconds

    fixed_batch = views_of(next(iter(loader)))

    def model_only(n: int) -> float:
        clock = _Clock(spec.device)
        clock.tick()
        for _ in range(n):
            step(fixed_batch)
        clock.tick(last=True)
        return clock.seconds

    def e2e(n: int) -> float:
        clock = _Clock(spec.device)
        for i, batch in zip(range(n + 1), loader, strict=False):
            batch = views_of(batch)
            clock.tick(last=i == n)
            if i < n:  # the last batch only closes the clock
                step(batch)
        return clock.seconds

    def warmup() -> None:
        pipeline(1)
        model_only(2 if compiled else 1)

    return Config(
        f"plain-{setting}" + ("-compile" if compiled else ""),
        setting,
        "plain loop (ours)" + (", compiled" if compiled else ""),
        _precision_label(bf16, channels_last),
        warmup,
        {"pipeline": pipeline, "model": model_only, "e2e": e2e},
    )


def ours_lightning(
    spec: Spec, loader: DataLoader, setting: str, bf16: bool, channels_last: bool, compiled: bool
) -> Config:
    """Our LightningModule driven by a real ``lightning.Trainer`` fit over the loader.

    Progress bar, logger, checkpoints and the model summary are off: they are optional
    conveniences, not the per-step cost of the framework that the comparison is about.
    """
    model = build_method(spec, channels_last)
    if compiled:
        _compile(model)

    def fit(max_steps: int, callbacks: list) -> None:
        if isinstance(model, MomentumMethod):
            model._ema_step = -1  # a new Trainer restarts global_step at 0
        trainer = Trainer(
            accelerator="gpu" if spec.device.type == "cuda" else "cpu",
            devices=1,
            precision="bf16-mixed" if bf16 else "32-true",
            max_epochs=1,
            max_steps=max_steps,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=callbacks,
        )
        trainer.fit(model, train_dataloaders=loader)

    def e2e(n: int) -> float:
        assert n + 1 == len(loader), f"an epoch of {n + 1} batches expected, got {len(loader)}"
        timer = _BatchClock(spec.device)
        fit(-1, [timer])  # one epoch: n + 1 batches, the last only closes the clock
        return timer.clock.seconds

    return Config(
        f"lightning-{setting}" + ("-compile" if compiled else ""),
        setting,
        "lightning (ours)" + (", compiled" if compiled else ""),
        _precision_label(bf16, channels_last),
        lambda: fit(2 if compiled else 1, []),
        {"e2e": e2e},
    )


# ---- lightly: its transforms, loader, heads and losses in a plain loop --------------------


def lightly_available() -> bool:
    return importlib.util.find_spec("lightly") is not None


def _lightly_resnet(spec: Spec) -> tuple[nn.Module, int]:
    """torchvision's ResNet as lightly's examples make it, with our 32 px stem when asked."""
    import torchvision

    resnet = getattr(torchvision.models, spec.backbone)()
    if spec.small_stem:  # the same change as contrastive.backbones' small_stem
        resnet.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        resnet.maxpool = nn.Identity()
    dim = resnet.fc.in_features
    return nn.Sequential(*list(resnet.children())[:-1], nn.Flatten(1)), dim  # (B, dim)


def _lightly_transform(spec: Spec) -> Callable:
    import lightly.transforms as T

    if spec.method == "simclr":
        b, c, s, h = spec.jitter
        return T.SimCLRTransform(
            input_size=spec.size,
            cj_strength=1.0,
            cj_bright=b,
            cj_contrast=c,
            cj_sat=s,
            cj_hue=h,
            gaussian_blur=spec.blur[0],
        )
    return T.BYOLTransform(
        view_1_transform=T.BYOLView1Transform(
            input_size=spec.size, gaussian_blur=spec.blur[0], solarization_prob=spec.solarize[0]
        ),
        view_2_transform=T.BYOLView2Transform(
            input_size=spec.size, gaussian_blur=spec.blur[1], solarization_prob=spec.solarize[1]
        ),
    )


def lightly_loop(spec: Spec, images: Tensor, batches: int, workers: int) -> Config:
    """lightly's SimCLR / BYOL examples: PIL transforms in loader workers, fp32, a plain loop."""
    import copy

    from lightly.data import LightlyDataset
    from lightly.loss import NegativeCosineSimilarity, NTXentLoss
    from lightly.models.modules import (
        BYOLPredictionHead,
        BYOLProjectionHead,
        SimCLRProjectionHead,
    )
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.utils.scheduler import cosine_schedule

    device = spec.device
    dataset = LightlyDataset.from_torch_dataset(
        PILImages(images, batches * spec.batch), transform=_lightly_transform(spec)
    )
    loader = DataLoader(
        dataset,
        batch_size=spec.batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,  # workers start once, not in every timed epoch
    )
    torch.manual_seed(0)
    backbone, dim = _lightly_resnet(spec)
    if spec.method == "simclr":
        head = SimCLRProjectionHead(dim, spec.hidden, spec.out)
        model = nn.ModuleDict({"backbone": backbone, "head": head}).to(device)
        criterion = NTXentLoss()  # its default temperature; the cost does not depend on it
    else:
        projector = BYOLProjectionHead(dim, spec.hidden, spec.out)
        predictor = BYOLPredictionHead(spec.out, spec.predictor_hidden, spec.out)
        model = nn.ModuleDict({"backbone": backbone, "head": projector, "predictor": predictor})
        model["backbone_momentum"] = copy.deepcopy(backbone)
        model["head_momentum"] = copy.deepcopy(projector)
        deactivate_requires_grad(model["backbone_momentum"])
        deactivate_requires_grad(model["head_momentum"])
        model = model.to(device)
        criterion = NegativeCosineSimilarity()
    optimizer = OPTIMIZER([p for p in model.parameters() if p.requires_grad])
    step_count = [0]

    def project(x: Tensor) -> Tensor:
        return model["head"](model["backbone"](x))

    def step(x0: Tensor, x1: Tensor) -> None:
        if spec.method == "simclr":  # lightly's examples: one forward per view
            loss = criterion(project(x0), project(x1))
        else:
            momentum = cosine_schedule(step_count[0], 10**6, 0.996, 1.0)
            update_momentum(model["backbone"], model["backbone_momentum"], m=momentum)
            update_momentum(model["head"], model["head_momentum"], m=momentum)
            p0, p1 = model["predictor"](project(x0)), model["predictor"](project(x1))
            with torch.no_grad():
                z0 = model["head_momentum"](model["backbone_momentum"](x0))
                z1 = model["head_momentum"](model["backbone_momentum"](x1))
            loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        step_count[0] += 1

    def views_of(batch: tuple) -> tuple[Tensor, Tensor]:
        x0, x1 = batch[0]  # (views, targets, filenames)
        return x0.to(device), x1.to(device)

    # Loader runs always read the whole epoch (n + 1 batches): a broken-off epoch would leave
    # the workers preparing batches nobody takes, on cores the next configuration needs.
    def pipeline(n: int) -> float:
        assert n + 1 == len(loader), f"an epoch of {n + 1} batches expected, got {len(loader)}"
        clock = _Clock(device)
        for i, batch in enumerate(loader):
            views_of(batch)
            clock.tick(last=i == n)
        return clock.seconds

    fixed_views = views_of(next(iter(DataLoader(dataset, batch_size=spec.batch))))

    def model_only(n: int) -> float:
        clock = _Clock(device)
        clock.tick()
        for _ in range(n):
            step(*fixed_views)
        clock.tick(last=True)
        return clock.seconds

    def e2e(n: int) -> float:
        assert n + 1 == len(loader), f"an epoch of {n + 1} batches expected, got {len(loader)}"
        clock = _Clock(device)
        for i, batch in enumerate(loader):
            views = views_of(batch)
            clock.tick(last=i == n)
            if i < n:  # the last batch only closes the clock
                step(*views)
        return clock.seconds

    def warmup() -> None:
        pipeline(batches - 1)
        model_only(1)

    version = importlib.metadata.version("lightly")
    return Config(
        "lightly",
        "a+b",
        f"lightly {version}",
        "fp32",
        warmup,
        {"pipeline": pipeline, "model": model_only, "e2e": e2e},
    )


# ---- FLOPs and MFU ------------------------------------------------------------------------


FLOP_BATCH = 16  # images of the counted step: FLOPs per image hardly depend on the batch


def training_flops(spec: Spec) -> float:
    """FLOPs per image of one training step of the spec's model, on the spec's device.

    ``FlopCounterMode`` counts the matrix products and convolutions that run in the loss's
    forward and backward (a momentum encoder's forward included) on ``FLOP_BATCH`` images
    with their views made first (the augmentation is not counted), in float32 (the count does
    not depend on the dtype). Elementwise work is left out, as MFU conventionally does. Per
    image, the count hardly depends on the batch: only the loss's batch-by-batch products
    grow faster, and they are a millionth of the step at batch 256. lightly's model has the
    same layers, so the same count serves its rows.
    """
    model = build_method(spec, channels_last=False)
    images = make_images(dataclasses.replace(spec, batch=FLOP_BATCH), FLOP_BATCH).to(spec.device)
    batch = {"image": images, "labels": {"class": torch.arange(FLOP_BATCH, device=spec.device) % 2}}
    batch["views"] = model.make_views(batch)
    counter = FlopCounterMode(display=False)
    with counter:
        model.training_loss(batch).backward()
    return counter.get_total_flops() / FLOP_BATCH


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


# ---- settings, the run, the table ---------------------------------------------------------


def device_has_bf16(device: torch.device) -> bool:
    """Fast bf16 on this device: CUDA's check, or the CPU's avx512_bf16 / amx_bf16 flags."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _precision_label(bf16: bool, channels_last: bool) -> str:
    return ("bf16-mixed" if bf16 else "fp32") + (", channels-last" if channels_last else "")


def build_configs(
    spec: Spec, args: argparse.Namespace, bf16: bool, with_lightly: bool
) -> list[Config]:
    """Every row for one method: ours in settings (a) and (b) (and compiled), and lightly.

    The plain loop and lightly exist for SimCLR and BYOL; other methods get the Lightning rows.
    """
    batches = args.steps + 1  # n + 1 ready batches time n steps
    images = make_images(spec, min(batches, 4) * spec.batch)
    ours_workers = args.workers if spec.device.type == "cuda" else 0  # views are made in-process
    loader = our_loader(spec, images, batches, ours_workers)
    wanted = set(args.only) if args.only else None
    settings = [("a", False, False, False), ("b", bf16, True, False)]
    if args.compile:
        settings.append(("b", bf16, True, True))
    configs = []
    for setting, use_bf16, channels_last, compiled in settings:
        for factory, name in ((ours_lightning, "lightning"), (ours_plain, "plain")):
            if name == "plain" and spec.method not in ("simclr", "byol"):
                continue
            full = f"{name}-{setting}" + ("-compile" if compiled else "")
            if wanted is None or full in wanted:
                configs.append(factory(spec, loader, setting, use_bf16, channels_last, compiled))
    with_lightly = with_lightly and spec.method in ("simclr", "byol")
    if with_lightly and (wanted is None or "lightly" in wanted):
        configs.append(lightly_loop(spec, images, batches, args.workers))
    flops = training_flops(spec)
    for config in configs:
        config.flops_per_image = flops
    return configs


def measure(configs: list[Config], steps: int, repeats: int) -> None:
    """Warm every configuration up, then time each kind of each, round-robin, ``repeats`` times."""
    for config in configs:
        config.warmup()
    for _ in range(repeats):
        for config in configs:
            for kind in STEP_TIMES:
                if kind in config.times:
                    config.seconds.setdefault(kind, []).append(config.times[kind](steps))


def _rate(config: Config | None, kind: str, images: int) -> float | None:
    """Median images/s of one kind of timing; ``images`` per timed run."""
    seconds = None if config is None else config.seconds.get(kind)
    return images / statistics.median(seconds) if seconds else None


def _cell(value: float | None, fmt: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, fmt) + suffix


def _rate_cell(value: float | None) -> str:
    return _cell(value, ".1f" if value is not None and value < 100 else ".0f")


def table(spec: Spec, configs: list[Config], steps: int, peak: float | None, note: str) -> str:
    """The rows of one method, then the goals of issue #7 read off them.

    Columns: images/s of the data pipeline alone, the model step alone and end to end (e2e);
    ``pipe %`` and ``model %``: the time of that part alone as a share of the e2e time (they
    add up to more than 100% where loader workers overlap the model); ``vs lightly``: e2e
    against lightly's; ``vs plain``: how much slower Lightning is than the plain loop.
    """
    images = steps * spec.batch
    by_name = {c.name: c for c in configs}
    lightly = _rate(by_name.get("lightly"), "e2e", images)
    head = (
        f"{'setting':<8}{'implementation':<30}{'precision':<26}{'pipeline':>9}{'model':>8}"
        f"{'e2e':>8}{'pipe %':>8}{'model %':>8}{'vs lightly':>11}{'vs plain':>9}"
    )
    lines = [head + (f"{'TFLOP/s':>9}{'MFU':>7}" if peak else "")]
    for config in configs:
        pipe, model, e2e = (_rate(config, kind, images) for kind in STEP_TIMES)
        shares = [None if part is None else 100 * e2e / part for part in (pipe, model)]
        versus = None if lightly is None else e2e / lightly
        plain = _rate(by_name.get(config.name.replace("lightning", "plain")), "e2e", images)
        overhead = None  # % slower than the plain loop
        if config.name.startswith("lightning") and plain is not None:
            overhead = 100 * (plain / e2e - 1)
        line = (
            f"{config.setting:<8}{config.label:<30}{config.precision:<26}"
            f"{_rate_cell(pipe):>9}{_rate_cell(model):>8}{_rate_cell(e2e):>8}"
            f"{_cell(shares[0], '.0f'):>8}{_cell(shares[1], '.0f'):>8}"
            f"{_cell(versus, '.2f', 'x'):>11}{_cell(overhead, '+.1f', '%'):>9}"
        )
        if peak:
            tflops = config.flops_per_image * e2e / 1e12
            line += f"{tflops:>9.1f}{100 * tflops * 1e12 / peak:>6.1f}%"
        lines.append(line)
    if "lightly" not in by_name:
        lines.append(f"{'a+b':<8}{'lightly':<30}{note}")
    goals = []
    for name, goal in (("lightning-a", 1.0), ("lightning-b", 2.0), ("lightning-b-compile", 2.0)):
        e2e = _rate(by_name.get(name), "e2e", images)
        if e2e is not None and lightly is not None:
            met = "met" if e2e / lightly >= goal else "NOT met"
            goals.append(f"{name} {e2e / lightly:.2f}x lightly (goal {goal:.1f}x: {met})")
    for name in ("lightning-a", "lightning-b", "lightning-b-compile"):
        e2e = _rate(by_name.get(name), "e2e", images)
        plain = _rate(by_name.get(name.replace("lightning", "plain")), "e2e", images)
        if e2e is not None and plain is not None:
            overhead = 100 * (plain / e2e - 1)
            met = "met" if overhead <= 3.0 else "NOT met"
            goals.append(f"{name} overhead {overhead:+.1f}% (goal <= 3%: {met})")
    return "\n".join(lines + (["goals: " + "; ".join(goals)] if goals else []))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--methods",
        default="simclr,byol",
        help=f"comma-separated, from: {', '.join(sorted(IMAGE_METHODS))}",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, help="images per batch (default 256)")
    parser.add_argument(
        "--steps", type=int, help="timed steps per repetition (default: 2 on cpu, 20 on cuda)"
    )
    parser.add_argument("--repeats", type=int, help="round-robin repetitions (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 16, 2 steps, 2x")
    parser.add_argument("--skip-lightly", action="store_true", help="leave lightly's rows out")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="lightly's loader workers (its examples use 8; default: that, at most the cores)",
    )
    parser.add_argument("--bf16", choices=["auto", "on", "off"], default="auto")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add torch.compile rows to setting (b) (default: on for cuda, off for cpu)",
    )
    parser.add_argument("--peak-tflops", type=float, help="the device's bf16 peak, for MFU")
    parser.add_argument("--only", nargs="+", help="rows to run: lightning-a plain-b lightly ...")
    args = parser.parse_args(argv)
    quick = dict(batch_size=16, steps=2, repeats=2) if args.quick else {}
    # A CPU step at batch 256 takes tens of seconds: two of them average out well enough.
    steps = 2 if args.device == "cpu" else 20
    for key, full in dict(batch_size=256, steps=steps, repeats=3).items():
        if getattr(args, key) is None:
            setattr(args, key, quick.get(key, full))
    if args.steps < 1 or args.repeats < 1 or args.batch_size < 2:
        parser.error("need --steps >= 1, --repeats >= 1 and --batch-size >= 2 (BatchNorm)")
    rows = {f"{impl}-{setting}" for impl in ("lightning", "plain") for setting in ROW_SETTINGS}
    if args.only and (unknown := set(args.only) - rows - {"lightly"}):
        parser.error(f"unknown rows {sorted(unknown)}; expected from {sorted(rows | {'lightly'})}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := set(methods) - set(IMAGE_METHODS):
        parser.error(f"unknown methods {sorted(unknown)}; expected from {sorted(IMAGE_METHODS)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    if args.compile is None:
        args.compile = device.type == "cuda"
    bf16 = device_has_bf16(device) if args.bf16 == "auto" else args.bf16 == "on"
    with_lightly = not args.skip_lightly and lightly_available()
    if not args.skip_lightly and not with_lightly:
        parser.error(
            "lightly is not importable: run in the benchmark venv (BENCHMARKS.md, "
            "benchmarks/requirements-peers.txt) or pass --skip-lightly"
        )
    note = "skipped (--skip-lightly)" if args.skip_lightly else "not selected (--only)"
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*to_tensor.*deprecated.*")

    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}"
    else:
        where = f"cpu, {torch.get_num_threads()} threads, bf16 {'yes' if bf16 else 'no'}"
    peak = peak_flops(device, args.peak_tflops)
    for method in methods:
        spec = make_spec(method, device, args.batch_size)
        configs = build_configs(spec, args, bf16, with_lightly)
        measure(configs, args.steps, args.repeats)
        stem = " (32 px stem)" if spec.small_stem else ""
        print(
            f"\n{method} training throughput, images/s (2 views each): {spec.backbone}{stem}, "
            f"{spec.size} px, batch {spec.batch}; {where}; torch {torch.__version__}; "
            f"lightly loader workers {args.workers}\n"
            f"medians of {args.repeats} round-robin repeats of {args.steps} steps"
            + (f"; MFU against {peak / 1e12:.0f} TFLOP/s bf16 dense" if peak else "")
        )
        print(table(spec, configs, args.steps, peak, note))


if __name__ == "__main__":
    main()
