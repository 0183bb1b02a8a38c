"""Backbone registry: a name -> a module mapping images ``(B, C, H, W)`` to features ``(B, D)``.

Every backbone has an int ``num_features == D`` and a ``preprocessing``: the mean, std and image
size its weights expect (:class:`Preprocessing`). Names are either registered here with
``@register_backbone()`` or carry a source prefix (``"timm:resnet18"``); a new source is one
entry in ``_SOURCES``. Local weights come from ``checkpoint=PATH``, hub weights from
``pretrained=True``.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import os
from collections.abc import Callable, Iterator
from typing import NamedTuple

import timm
import torchvision.models as tvm
from torch import nn

from contrastive.checkpoints import read_checkpoint

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


class Preprocessing(NamedTuple):
    """What a backbone's weights expect of its input images.

    Attributes:
        mean: per-channel mean of images scaled to [0, 1], subtracted before the backbone.
        std: per-channel standard deviation, divided by after the mean.
        image_size: the side the weights were made for; ``None`` where the data sets it.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int | None = None

    @classmethod
    def random_init(cls, channels: int = 3) -> Preprocessing:
        """The project's normalisation for weights trained here from random init: 0.5 and 0.25
        per channel, which every recorded result was trained with."""
        return cls((0.5,) * channels, (0.25,) * channels)

    @classmethod
    def of(cls, mean, std, size: int | tuple[int, ...] | None) -> Preprocessing:
        """From a library's config: sequences of floats, and a side or an ``(..., H, W)``."""
        side = size[-1] if isinstance(size, (tuple, list)) else size
        return cls(tuple(map(float, mean)), tuple(map(float, std)), side and int(side))


class OpenCLIPWeights(NamedTuple):
    """The pretrained open_clip model an ``open_clip:NAME`` image tower was cut from: what CLIP
    needs to keep the model's joint space when its text tower comes from the same weights.

    Attributes:
        model: the open_clip model name (``ViT-B-32``).
        pretrained: the weights, a tag or a local file, as given to open_clip.
        log_logit_scale: the model's learnt log logit scale.
        logit_bias: its learnt logit bias (SigLIP models); ``None`` without one.
    """

    model: str
    pretrained: str
    log_logit_scale: float
    logit_bias: float | None = None


class UnknownBackboneError(ValueError):
    """The backbone name is neither registered nor known to its source."""


class BackboneWeightsError(RuntimeError):
    """Pretrained weights could not be fetched; the original exception is on ``__context__``."""


def register_backbone(name: str | None = None) -> Callable[[Callable], Callable]:
    """Register a factory ``fn(*, pretrained: bool = False, **kwargs) -> nn.Module``.

    The module it returns may set ``preprocessing`` (a :class:`Preprocessing`) to say how its
    weights want their input normalised; without it, :meth:`Preprocessing.random_init`.

    Args:
        name: Registered name; ``fn.__name__`` when None. Must be new and contain no ``":"``
            (reserved for source prefixes such as ``"timm:"``).
    """
    if callable(name):
        raise TypeError("use @register_backbone() or @register_backbone('name'), with parentheses")

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in _REGISTRY or ":" in key:
            raise ValueError(f"expected a new backbone name without ':', got '{key}'")
        _REGISTRY[key] = fn
        return fn

    return decorator


def create_backbone(
    name: str, *, pretrained: bool = False, checkpoint: str | None = None, **kwargs
) -> nn.Module:
    """Build a backbone mapping float images ``(B, C, H, W)`` to features ``(B, num_features)``.

    Its ``preprocessing`` is what the hub's weights expect (timm's ``pretrained_cfg``, open_clip's
    preprocess config, torchvision's weights transforms) when ``pretrained``, and
    :meth:`Preprocessing.random_init` otherwise (``checkpoint`` weights change neither); the image
    size of an open_clip tower is its own, whatever the weights.

    Args:
        name: A registered name (see ``list_backbones()``) or ``"timm:NAME"`` for any timm model,
            built headless (``num_classes=0``).
        pretrained: Load the hub's default weights (needs network or a warm cache).
        checkpoint: Local weights loaded last: a plain state_dict of the backbone, or a Lightning
            checkpoint whose ``state_dict`` keys ``backbone.*`` are the backbone's.
        **kwargs: Passed to the factory (e.g. ``small_stem=True``, timm's ``img_size=32``).

    Raises:
        UnknownBackboneError: Unknown name; the message lists close matches.
        BackboneWeightsError: ``pretrained=True`` and the weights could not be fetched.
        CheckpointError: ``checkpoint`` does not exist or cannot be read as data.
        RuntimeError: ``checkpoint`` keys or shapes do not fit the backbone.
    """
    prefix, rest = name.split(":", 1) if ":" in name else ("", name)
    model = _source(prefix, name).create(rest, pretrained=pretrained, **kwargs)
    if not isinstance(getattr(model, "num_features", None), int):
        raise TypeError(f"backbone '{name}' must have an int num_features, got {type(model)}")
    if not isinstance(getattr(model, "preprocessing", None), Preprocessing):
        model.preprocessing = Preprocessing.random_init()
    if checkpoint is not None:
        _load_checkpoint(model, checkpoint, name)
    return model


def list_backbones(pattern: str = "*") -> list[str]:
    """Sorted backbone names matching an fnmatch ``pattern``; ``"timm:vit_*"`` lists timm models."""
    prefix, rest = pattern.split(":", 1) if ":" in pattern else ("", pattern)
    tag = f"{prefix}:" if prefix else ""
    return sorted(tag + n for n in _source(prefix, pattern).names(rest or "*"))


@contextlib.contextmanager
def fetching(what: str) -> Iterator[None]:
    """Turn a hub failure into a one-line BackboneWeightsError naming ``what``."""
    try:
        yield
    except TypeError:  # a bad keyword argument, which fails the same way without pretrained
        raise
    except Exception as e:
        cause = ": ".join([type(e).__name__, *str(e).strip().splitlines()[:1]])
        # `from None` keeps what the user sees to one line; the original stays on `__context__`.
        raise BackboneWeightsError(
            f"could not fetch pretrained weights for {what}: {cause}"
        ) from None


def _unknown(name: str, known: list[str], hint: str) -> UnknownBackboneError:
    close = ", ".join(difflib.get_close_matches(name, known, n=5)) or "none"
    return UnknownBackboneError(f"unknown backbone '{name}'; close matches: {close} (see {hint})")


def _few(keys: list[str], n: int = 5) -> str:  # "a, b, c, d, e (+3 more)"
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _load_checkpoint(model: nn.Module, path: str, name: str) -> None:
    load_weights(model, path, prefix="backbone.", what=f"backbone '{name}'")


def load_weights(module: nn.Module, path: str | os.PathLike, prefix: str, what: str) -> None:
    """Load ``module``'s weights from a state_dict file or from the ``prefix`` keys of a
    Lightning checkpoint, requiring an exact fit. The file is read as data only
    (:func:`contrastive.checkpoints.read_checkpoint`): no pickle in it runs.

    Args:
        module: what to load into.
        path: a ``torch.save``'d state_dict, or a Lightning checkpoint.
        prefix: the module's key prefix in a Lightning checkpoint's ``state_dict``
            (``"backbone."``, ``"text_tower."``).
        what: the module's name in error messages (``"backbone 'resnet18'"``).

    Raises:
        CheckpointError: one line: no such file, not a complete checkpoint, or one that holds
            more than tensors and plain values.
        RuntimeError: one line naming missing and unexpected keys and wrong shapes.
    """
    state = read_checkpoint(path, f"checkpoint for {what}")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # Lightning
        full = state["state_dict"]
        state = {k.removeprefix(prefix): v for k, v in full.items() if k.startswith(prefix)}
        if not state and module.state_dict():
            raise RuntimeError(f"no '{prefix}*' keys in '{path}', got {_few(sorted(full))}")
    if not isinstance(state, dict):
        raise RuntimeError(
            f"expected a state_dict or Lightning checkpoint in '{path}', got {type(state)}"
        )
    load_state(module, state, f"checkpoint '{path}'", what)


def load_state(module: nn.Module, state: dict, source: str, what: str) -> None:
    """Load ``state`` into ``module``, requiring an exact fit.

    Raises:
        RuntimeError: one line naming ``source``, ``what``, and the missing and unexpected keys
            and wrong shapes.
    """
    expected = module.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    named = [("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes)]
    problems = [f"{kind}: {_few(keys)}" for kind, keys in named if keys]
    if problems:
        raise RuntimeError(f"{source} does not fit {what}: {'; '.join(problems)}")
    module.load_state_dict(state)


class _Source(NamedTuple):
    create: Callable[..., nn.Module]  # (name, *, pretrained, **kwargs) -> (B, C, H, W) -> (B, D)
    names: Callable[[str], list[str]]  # fnmatch pattern -> names without the prefix


def check_backbone_name(name: str) -> None:
    """Raise :class:`UnknownBackboneError`, listing close matches, unless ``name`` is known.

    Cheap (nothing is built), so the CLI checks a config's backbone before instantiating it.
    """
    prefix, rest = name.split(":", 1) if ":" in name else ("", name)
    source = _source(prefix, name)
    if rest not in source.names(rest):
        tag = f"{prefix}:" if prefix else ""
        known = [tag + n for n in source.names("*")]
        raise _unknown(name, known, f"list_backbones('{tag}*')" if tag else "list_backbones()")


def _create_registered(name: str, *, pretrained: bool, **kwargs) -> nn.Module:
    check_backbone_name(name)
    return _REGISTRY[name](pretrained=pretrained, **kwargs)


def _create_timm(name: str, *, pretrained: bool, **kwargs) -> nn.Module:
    check_backbone_name(f"timm:{name}")
    with fetching(f"'timm:{name}'") if pretrained else contextlib.nullcontext():
        model = timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
    # Headless forward() returns pre-logits features, head_hidden_size wide; that differs from
    # timm's num_features when the head has its own layers (MobileNetV3: 1024 vs 288).
    model.num_features = int(getattr(model, "head_hidden_size", model.num_features))
    if pretrained:  # timm's own resolution: the weights' pretrained_cfg and any overlay
        config = timm.data.resolve_model_data_config(model)
        model.preprocessing = Preprocessing.of(config["mean"], config["std"], config["input_size"])
    return model


def _create_open_clip(name: str, *, pretrained: bool | str, **kwargs) -> nn.Module:
    """The image tower of an open_clip model: ``(B, 3, S, S) -> (B, embed_dim)``.

    ``pretrained``: a tag (``open_clip.list_pretrained_tags_by_model(name)``) or a local
    checkpoint path; ``True`` takes the model's first listed tag. ``kwargs`` go to
    ``open_clip.create_model`` (e.g. ``force_image_size=64``).
    """
    open_clip = _open_clip()
    check_backbone_name(f"open_clip:{name}")
    if pretrained is True:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if not tags:
            raise BackboneWeightsError(f"open_clip:{name} has no pretrained tags; pass a path")
        pretrained = tags[0]
    what = f"'open_clip:{name}' (pretrained='{pretrained}')"
    with fetching(what) if pretrained else contextlib.nullcontext():
        model = open_clip.create_model(name, pretrained=pretrained or None, **kwargs)
    visual = model.visual
    visual.num_features = int(visual.output_dim)
    config = visual.preprocess_cfg  # the size is the tower's own, whatever the weights
    random_init = Preprocessing.random_init()
    mean, std = (config["mean"], config["std"]) if pretrained else random_init[:2]
    visual.preprocessing = Preprocessing.of(mean, std, config["size"])
    if pretrained:  # its output is already in the model's joint space (the projection is inside)
        bias = getattr(model, "logit_bias", None)
        visual.open_clip_weights = OpenCLIPWeights(
            name, str(pretrained), model.logit_scale.item(), None if bias is None else bias.item()
        )
    return visual


def _open_clip_names(pattern: str) -> list[str]:
    return fnmatch.filter(_open_clip().list_models(), pattern)


def _open_clip():
    """open_clip, from the ``[text]`` extra; imported only for ``open_clip:`` names."""
    try:
        import open_clip
    except ImportError:
        raise UnknownBackboneError(
            "open_clip: backbones need open_clip_torch: pip install 'contrastive[text]'"
        ) from None
    return open_clip


_SOURCES: dict[str, _Source] = {
    "": _Source(_create_registered, lambda pattern: fnmatch.filter(_REGISTRY, pattern)),
    "timm": _Source(_create_timm, timm.list_models),
    "open_clip": _Source(_create_open_clip, _open_clip_names),
}


def _source(prefix: str, name: str) -> _Source:
    if prefix not in _SOURCES:
        known = ", ".join(f"{p}:" for p in _SOURCES if p)
        raise UnknownBackboneError(
            f"unknown backbone prefix '{prefix}:' in '{name}'; known: {known}"
        )
    return _SOURCES[prefix]


def _resnet(
    builder: Callable, weights: tvm.WeightsEnum, pretrained: bool, small_stem: bool, **kwargs
) -> nn.Module:
    model = builder(weights=None, **kwargs)
    if pretrained:
        with fetching(f"'{builder.__name__}' ({weights})"):
            state = weights.get_state_dict(progress=True, check_hash=True)
        model.load_state_dict(state)
        hub = weights.transforms()  # torchvision's own evaluation transform of these weights
        model.preprocessing = Preprocessing.of(hub.mean, hub.std, hub.crop_size)
    if small_stem:  # SimCLR's CIFAR stem keeps 32 px images at 32 px until layer2
        c_in, c_out = model.conv1.in_channels, model.conv1.out_channels
        model.conv1 = nn.Conv2d(c_in, c_out, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    model.num_features = model.fc.in_features
    model.fc = nn.Identity()  # (B, num_features) after global average pooling
    return model


@register_backbone()
def resnet18(*, pretrained: bool = False, small_stem: bool = False, **kwargs) -> nn.Module:
    """ResNet-18 (He et al. 2016) from torchvision, headless: ``(B, 3, H, W) -> (B, 512)``.

    Args:
        pretrained: Load torchvision's DEFAULT ImageNet weights.
        small_stem: 3x3 stride-1 ``conv1`` and no max-pool, for 32-64 px images (SimCLR's CIFAR
            variant, Chen et al. 2020). With ``pretrained`` this ``conv1`` stays random-init.
        **kwargs: Passed to the torchvision builder (e.g. ``zero_init_residual=True``).
    """
    return _resnet(tvm.resnet18, tvm.ResNet18_Weights.DEFAULT, pretrained, small_stem, **kwargs)


@register_backbone()
def resnet34(*, pretrained: bool = False, small_stem: bool = False, **kwargs) -> nn.Module:
    """ResNet-34 (He et al. 2016), headless: ``(B, 3, H, W) -> (B, 512)``; args as resnet18."""
    return _resnet(tvm.resnet34, tvm.ResNet34_Weights.DEFAULT, pretrained, small_stem, **kwargs)


@register_backbone()
def resnet50(*, pretrained: bool = False, small_stem: bool = False, **kwargs) -> nn.Module:
    """ResNet-50 (He et al. 2016), headless: ``(B, 3, H, W) -> (B, 2048)``; args as resnet18."""
    return _resnet(tvm.resnet50, tvm.ResNet50_Weights.DEFAULT, pretrained, small_stem, **kwargs)


@register_backbone()
def small_cnn(*, pretrained: bool = False, width: int = 32, in_chans: int = 3) -> nn.Module:
    """Plain 6-layer CNN, our fast default for 32-64 px images on CPU: ``(B, C, H, W) -> (B, 8w)``.

    conv3x3-BN-ReLU with channels ``(w, 2w, 2w, 4w, 4w, 8w)``, stride 2 at layers 2, 4 and 6
    (``H/8`` after the last), then global average pooling.

    Args:
        pretrained: Must be False: no hub weights exist (use ``checkpoint=PATH``).
        width: ``w``, channels of the first layer.
        in_chans: Input channels ``C``.
    """
    if pretrained:
        raise ValueError("small_cnn has no pretrained weights; train it or pass checkpoint=PATH")
    for name, value in (("width", width), ("in_chans", in_chans)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"small_cnn: expected {name} an integer >= 1, got {value!r}")
    chans = [in_chans, width, 2 * width, 2 * width, 4 * width, 4 * width, 8 * width]
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip(chans[:-1], chans[1:], strict=True)):
        conv = nn.Conv2d(c_in, c_out, 3, stride=2 if i % 2 else 1, padding=1, bias=False)
        layers += [conv, nn.BatchNorm2d(c_out), nn.ReLU()]
    # (B, C, H, W) -> (B, 8w, H/8, W/8) -> (B, 8w)
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model.num_features = 8 * width
    model.preprocessing = Preprocessing.random_init(in_chans)
    return model
