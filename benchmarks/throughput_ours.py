"""Our methods timed for ``benchmarks/throughput.py``: in a real ``lightning.Trainer`` fit and
in a plain PyTorch loop over the same modules, with the clocks both use; and the FLOPs of one
training step (``FlopCounterMode``), for MFU."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from lightning.pytorch import Callback, Trainer
from throughput_specs import (
    IMAGE_METHODS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    OPTIMIZER,
    Spec,
    UInt8Images,
    make_images,
)
from torch import Tensor
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from contrastive.augment import MultiCropAugment, SimCLRAugment
from contrastive.datamodules.common import Collate
from contrastive.ema import cosine_momentum, ema_update
from contrastive.methods import BYOL, MomentumMethod
from contrastive.methods.base import ContrastiveMethod

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


def _precision_label(bf16: bool, channels_last: bool) -> str:
    return ("bf16-mixed" if bf16 else "fp32") + (", channels-last" if channels_last else "")


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
