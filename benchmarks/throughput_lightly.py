"""lightly's documented SimCLR and BYOL recipes in a plain loop: the ``lightly`` rows of
``benchmarks/throughput.py``, timed as ours are. lightly is never a project dependency
(``benchmarks/requirements-peers.txt``)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable

import torch
from throughput_ours import Config, _Clock
from throughput_specs import OPTIMIZER, Spec
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset


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
