"""View augmentations made on the device, batched, with random parameters drawn per sample.

Data loaders yield uint8 images; a method calls its :class:`Augment` in
``on_after_batch_transfer`` so that the views are made where the model runs (GPU or CPU), in one
batched call. The pipelines wrap kornia (measured about 8x faster on CPU than torchvision v2
applied per sample, see BENCHMARKS.md), which draws every random parameter per sample.

In YAML, either use a preset with its named knobs::

    augment:
      class_path: contrastive.augment.SimCLRAugment
      init_args: {crop_scale: [0.2, 1.0], color_jitter: 0.8, blur: 0.0}

``MultiCropAugment`` adds local views at a smaller size (SwAV, DINO), or compose any kornia
augmentations::

    augment:
      class_path: contrastive.augment.Augment
      init_args:
        transforms:
          - class_path: kornia.augmentation.RandomHorizontalFlip
          - class_path: kornia.augmentation.RandomGrayscale
            init_args: {p: 0.5}
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia.augmentation as K
import torch
from torch import Tensor, nn

from contrastive.backbones import Preprocessing


class Augment(nn.Module):
    """A sequence of batched augmentations followed by normalisation.

    Args:
        transforms: kornia augmentations (or any module mapping float ``(B, C, H, W)`` in [0, 1]
            to the same), applied in order. Empty: no augmentation, only normalisation.
        mean: per-channel mean subtracted after augmentation. ``None``: the backbone's, which
            a method passes to :meth:`use_backbone_stats` (:meth:`Preprocessing.random_init`
            until then).
        std: per-channel standard deviation divided by after augmentation. ``None``: the
            backbone's.
    """

    def __init__(
        self,
        transforms: Sequence[nn.Module] = (),
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.transforms = nn.Sequential(*transforms)
        self._given = (mean, std)  # given explicitly: these win over the backbone's
        # Saved with the weights: a checkpoint restores the normalisation its encoder expects.
        self.register_buffer("mean", torch.empty(0))
        self.register_buffer("std", torch.empty(0))
        self.use_backbone_stats(Preprocessing.random_init())  # until a method passes its own

    def use_backbone_stats(self, preprocessing: Preprocessing) -> None:
        """Normalise with the backbone's mean and std, except where this augment was given its
        own."""
        mean = preprocessing.mean if self._given[0] is None else self._given[0]
        std = preprocessing.std if self._given[1] is None else self._given[1]
        if len(mean) != len(std):
            raise ValueError(f"mean and std need one value per channel, got {mean} and {std}")
        device = self.mean.device
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def to_float(self, images: Tensor) -> Tensor:
        """uint8 ``(B, C, H, W)`` in [0, 255] (or float in [0, 1]) -> float in [0, 1]."""
        if images.dtype == torch.uint8:
            return images.float().div_(255)
        return images.float()

    def normalize(self, images: Tensor) -> Tensor:
        """The evaluation view: float conversion and normalisation, no randomness."""
        return (self.to_float(images) - self.mean) / self.std

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """One random view per image: ``(B, C, H, W)`` uint8 -> normalised float."""
        views = self.transforms(self.to_float(images)).clamp_(0, 1)
        return (views - self.mean) / self.std

    def views(self, sources: list[Tensor]) -> list[Tensor]:
        """The training views of a batch: one random view of each source (the image, and its
        generator view or the image again), so two views; global views come first."""
        return [self(s) for s in sources]


class SimCLRAugment(Augment):
    """The SimCLR view distribution (Chen et al. 2020, appendix A) as one configurable preset.

    Random resized crop, horizontal flip, color jitter (with probability), random grayscale,
    Gaussian blur and solarisation (BYOL's second view uses the latter), each drawn per sample.

    Args:
        size: output side; ``None`` keeps the input size.
        crop_scale: area range of the random resized crop.
        crop_ratio: aspect-ratio range of the crop.
        hflip: probability of a horizontal flip.
        color_jitter: probability of color jitter.
        brightness: jitter strength, as in torchvision's ``ColorJitter``.
        contrast: jitter strength.
        saturation: jitter strength.
        hue: jitter strength, at most 0.5.
        grayscale: probability of converting to grayscale.
        blur: probability of Gaussian blur. SimCLR uses 0.5 on ImageNet and none on 32 px data.
        blur_sigma: range of the blur's standard deviation, in pixels.
        solarize: probability of solarisation.
        mean: normalisation mean; ``None``: the backbone's.
        std: normalisation standard deviation; ``None``: the backbone's.
    """

    def __init__(
        self,
        size: int | None = None,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        color_jitter: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.1,
        grayscale: float = 0.2,
        blur: float = 0.0,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        solarize: float = 0.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        self.size, self.crop_ratio = size, tuple(crop_ratio)
        crop = _LazyResizedCrop(size, crop_scale, crop_ratio)
        self._photometric = dict(
            hflip=hflip,
            color_jitter=color_jitter,
            jitter=(brightness, contrast, saturation, hue),
            grayscale=grayscale,
            blur=blur,
            blur_sigma=blur_sigma,
            solarize=solarize,
        )
        super().__init__([crop, *_photometric(**self._photometric)], mean, std)


class MultiCropAugment(SimCLRAugment):
    """Multi-crop (Caron et al. 2020, SwAV, arXiv:2006.09882, section 3.2): per image, 2 global
    views at ``size`` and ``num_local`` local views at ``local_size``, from smaller crops.

    Every view gets SimCLR's photometric transforms (flip, jitter, grayscale, blur, solarise),
    drawn per sample. The global views are one of each source (the image and its generator
    view, or the image twice), local view ``i`` crops source ``i % 2``. Methods compare every
    view with the global views of the other source, and a teacher sees the global views only
    (:func:`~contrastive.methods.base.cross_view_pairs`).

    In YAML::

        augment:
          class_path: contrastive.augment.MultiCropAugment
          init_args: {size: 224, crop_scale: [0.4, 1.0], num_local: 8, local_size: 96}

    Args:
        num_local: ``K``, local views per image (6 in SwAV, 8 in DINO).
        local_size: their side (96 for 224 px global views).
        local_scale: their crop area range (DINO's (0.05, 0.4); SwAV's (0.05, 0.14)).
        size: the global views' side; ``None`` keeps the input size.
        crop_scale: the global crops' area range (DINO's (0.4, 1); SwAV's (0.14, 1)).
        **kwargs: the other :class:`SimCLRAugment` arguments (photometric transforms,
            normalisation), applied to every view.
    """

    def __init__(
        self,
        num_local: int = 6,
        local_size: int = 96,
        local_scale: tuple[float, float] = (0.05, 0.4),
        size: int | None = None,
        crop_scale: tuple[float, float] = (0.4, 1.0),
        **kwargs,
    ) -> None:
        if num_local < 0 or local_size < 1:
            raise ValueError(
                f"expected num_local >= 0 and local_size >= 1, got {num_local} and {local_size}"
            )
        super().__init__(size=size, crop_scale=crop_scale, **kwargs)
        self.num_local = num_local
        crop = _LazyResizedCrop(local_size, local_scale, self.crop_ratio)
        self.local_transforms = nn.Sequential(crop, *_photometric(**self._photometric))

    @torch.no_grad()
    def views(self, sources: list[Tensor]) -> list[Tensor]:
        """The 2 global views (one per source), then ``num_local`` local views."""
        local = [
            self.local_transforms(self.to_float(sources[i % len(sources)])).clamp_(0, 1)
            for i in range(self.num_local)
        ]
        return [self(s) for s in sources] + [(v - self.mean) / self.std for v in local]


def _photometric(
    hflip: float,
    color_jitter: float,
    jitter: tuple[float, float, float, float],
    grayscale: float,
    blur: float,
    blur_sigma: tuple[float, float],
    solarize: float,
) -> list[nn.Module]:
    """SimCLR's transforms after the crop, each drawn per sample with its probability."""
    probabilities = dict(
        hflip=hflip, color_jitter=color_jitter, grayscale=grayscale, blur=blur, solarize=solarize
    )
    for name, p in probabilities.items():
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} is a probability in [0, 1], got {p}")
    transforms: list[nn.Module] = []
    if hflip > 0:
        transforms.append(K.RandomHorizontalFlip(p=hflip))
    if color_jitter > 0:
        transforms.append(K.ColorJitter(*jitter, p=color_jitter))
    if grayscale > 0:
        transforms.append(K.RandomGrayscale(p=grayscale))
    if blur > 0:
        transforms.append(_LazyGaussianBlur(blur_sigma, p=blur))
    if solarize > 0:
        transforms.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize))
    return transforms


class _LazyResizedCrop(nn.Module):
    """kornia's RandomResizedCrop, with the output size taken from the first batch when unset."""

    def __init__(
        self, size: int | None, scale: tuple[float, float], ratio: tuple[float, float]
    ) -> None:
        super().__init__()
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)
        self._crops: dict[tuple[int, int], nn.Module] = {}

    def forward(self, x: Tensor) -> Tensor:
        out = (self.size, self.size) if self.size else tuple(x.shape[-2:])
        if out not in self._crops:
            self._crops[out] = K.RandomResizedCrop(out, scale=self.scale, ratio=self.ratio)
        return self._crops[out](x)


class _LazyGaussianBlur(nn.Module):
    """Gaussian blur with the kernel at ~10% of the image side (SimCLR), odd, at least 3."""

    def __init__(self, sigma: tuple[float, float], p: float) -> None:
        super().__init__()
        self.sigma, self.p = tuple(sigma), p
        self._blurs: dict[int, nn.Module] = {}

    def forward(self, x: Tensor) -> Tensor:
        kernel = max(3, int(0.1 * x.shape[-1]) // 2 * 2 + 1)
        if kernel not in self._blurs:
            self._blurs[kernel] = K.RandomGaussianBlur(kernel, self.sigma, p=self.p)
        return self._blurs[kernel](x)
