import pytest
import timm
import torch
import torchvision
from torch import nn

from contrastive import backbones
from contrastive.backbones import (
    BackboneWeightsError,
    Preprocessing,
    UnknownBackboneError,
    create_backbone,
    list_backbones,
    register_backbone,
)
from contrastive.checkpoints import CheckpointError

# Extra arguments for small 32 px inputs; every other name is built with its defaults.
KWARGS = {"timm:vit_tiny_patch16_224": {"img_size": 32}}
# mobilenetv3: timm's num_features (288) differs from its headless output width (1024).
TIMM = ["timm:resnet18", "timm:vit_tiny_patch16_224", "timm:mobilenetv3_small_050"]


@pytest.fixture
def registry(monkeypatch):
    """A copy of the registry, so that tests may register names without leaking them."""
    monkeypatch.setattr(backbones, "_REGISTRY", dict(backbones._REGISTRY))
    return backbones._REGISTRY


def _randomize(model: nn.Module) -> None:
    """Set every float tensor to values no initialiser would give (running_var stays > 0)."""
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5)


@pytest.mark.parametrize("name", list_backbones() + TIMM)
def test_forward_backward(name):
    torch.manual_seed(0)
    model = create_backbone(name, **KWARGS.get(name, {})).train()
    assert isinstance(model.num_features, int)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, model.num_features)
    (out * torch.randn_like(out)).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"{name}: parameters without gradient: {no_grad[:5]}"
    assert all(p.grad.isfinite().all() for p in model.parameters() if p.requires_grad)


def test_registry_lists_the_builtin_backbones():
    assert {"resnet18", "resnet34", "resnet50", "small_cnn"} <= set(list_backbones())


@pytest.mark.parametrize("name, dim", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)])
def test_resnet_num_features_is_torchvision_fc_in_features(name, dim):
    model = create_backbone(name)
    assert model.num_features == dim == getattr(torchvision.models, name)().fc.in_features
    assert isinstance(model.fc, nn.Identity)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_small_stem_changes_the_stem_and_keeps_resolution(name):
    sizes = {}
    for small_stem in (False, True):
        model = create_backbone(name, small_stem=small_stem).eval()
        model.layer4.register_forward_hook(lambda m, i, o, s=small_stem: sizes.update({s: o.shape}))
        model(torch.randn(1, 3, 32, 32))
        conv1 = model.conv1
        if small_stem:
            assert (conv1.kernel_size, conv1.stride) == ((3, 3), (1, 1))
            assert isinstance(model.maxpool, nn.Identity)
        else:
            assert (conv1.kernel_size, conv1.stride) == ((7, 7), (2, 2))
            assert isinstance(model.maxpool, nn.MaxPool2d)
    assert sizes[False][-2:] == (1, 1) and sizes[True][-2:] == (4, 4)


def test_small_cnn_layout():
    model = create_backbone("small_cnn", width=4, in_chans=1)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 8, 16, 16, 32]
    assert [c.stride[0] for c in convs] == [1, 2, 1, 2, 1, 2]
    assert model.num_features == 32
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 32)


def test_small_cnn_has_no_pretrained_weights():
    with pytest.raises(ValueError, match="small_cnn has no pretrained weights"):
        create_backbone("small_cnn", pretrained=True)
    with pytest.raises(ValueError, match="small_cnn: expected width an integer >= 1, got 0"):
        create_backbone("small_cnn", width=0)
    # A dotted CLI flag (--model.backbone_kwargs.width=32) gives a string: named, not compared.
    with pytest.raises(ValueError, match="expected width an integer >= 1, got '32'"):
        create_backbone("small_cnn", width="32")


@pytest.mark.parametrize("lightning", [False, True])
def test_checkpoint_round_trip(tmp_path, lightning):
    torch.manual_seed(0)
    source = create_backbone("small_cnn", width=4)
    _randomize(source)
    state = source.state_dict()
    if lightning:
        state = {
            "state_dict": {"backbone." + k: v for k, v in state.items()}
            | {"head.layers.0.weight": torch.randn(3, 3)},
            "epoch": 3,
        }
    path = tmp_path / "weights.ckpt"
    torch.save(state, path)
    loaded = create_backbone("small_cnn", width=4, checkpoint=str(path))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(source.eval()(x), loaded.eval()(x))


def test_checkpoint_mismatch_names_the_file_and_keys(tmp_path):
    state = create_backbone("small_cnn", width=4).state_dict()
    state["extra.weight"] = state.pop("0.weight")
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(RuntimeError) as info:
        create_backbone("small_cnn", width=4, checkpoint=str(path))
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    assert "missing keys: 0.weight" in msg and "unexpected keys: extra.weight" in msg

    with pytest.raises(RuntimeError, match=r"wrong shapes: 0\.weight \(8, 3, 3, 3\) vs \(4,"):
        create_backbone("small_cnn", width=4, checkpoint=_save(tmp_path, width=8))


def _save(tmp_path, width: int) -> str:
    path = tmp_path / f"w{width}.pt"
    torch.save(create_backbone("small_cnn", width=width).state_dict(), path)
    return str(path)


def test_lightning_checkpoint_without_backbone_keys(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(1)}}, path)
    with pytest.raises(RuntimeError, match="no 'backbone.*' keys in .*encoder.weight"):
        create_backbone("small_cnn", checkpoint=str(path))


def test_missing_checkpoint_file(tmp_path):
    path = str(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="no checkpoint file at .*nope.pt"):
        create_backbone("small_cnn", checkpoint=path)


def _raise_connection_error(*args, **kwargs):
    raise ConnectionError("host unreachable\nsecond line of a long traceback")


def test_torchvision_weight_failure_is_one_line(monkeypatch):
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", _raise_connection_error)
    with pytest.raises(BackboneWeightsError) as info:
        create_backbone("resnet18", pretrained=True)
    msg = str(info.value)
    assert msg.startswith("could not fetch pretrained weights for 'resnet18'")
    assert msg.endswith(": ConnectionError: host unreachable") and "\n" not in msg
    assert isinstance(info.value.__context__, ConnectionError)
    assert isinstance(info.value, RuntimeError)


def test_torchvision_pretrained_weights_are_loaded(monkeypatch):
    torch.manual_seed(0)
    hub = torchvision.models.resnet18()
    monkeypatch.setattr(
        torchvision.models.WeightsEnum, "get_state_dict", lambda self, **kw: hub.state_dict()
    )
    model = create_backbone("resnet18", pretrained=True)
    assert torch.equal(model.conv1.weight, hub.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, hub.layer4[1].bn2.running_var)
    small = create_backbone("resnet18", pretrained=True, small_stem=True)
    assert small.conv1.weight.shape == (64, 3, 3, 3)  # random-init, not from the hub
    assert torch.equal(small.layer1[0].conv1.weight, hub.layer1[0].conv1.weight)


def test_timm_weight_failure_is_one_line(monkeypatch):
    monkeypatch.setattr(timm, "create_model", _raise_connection_error)
    with pytest.raises(BackboneWeightsError) as info:
        create_backbone("timm:resnet18", pretrained=True)
    assert str(info.value) == (
        "could not fetch pretrained weights for 'timm:resnet18': ConnectionError: host unreachable"
    )


def test_timm_bad_argument_is_not_a_weights_error(monkeypatch):
    def bad_argument(*args, **kwargs):
        raise TypeError("unexpected keyword argument 'bogus'")

    monkeypatch.setattr(timm, "create_model", bad_argument)
    with pytest.raises(TypeError, match="bogus"):
        create_backbone("timm:resnet18", pretrained=True, bogus=1)


def test_unknown_names_list_close_matches():
    with pytest.raises(UnknownBackboneError) as info:
        create_backbone("resnt18")
    assert str(info.value).startswith("unknown backbone 'resnt18'; close matches: resnet18")
    assert str(info.value).endswith("(see list_backbones())")
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnknownBackboneError, match="close matches: .*timm:resnet18,"):
        create_backbone("timm:resnet188")
    with pytest.raises(UnknownBackboneError, match="unknown backbone prefix 'foo:'.*timm:"):
        create_backbone("foo:bar")


def test_list_backbones_patterns():
    assert list_backbones("resnet*") == ["resnet18", "resnet34", "resnet50"]
    assert list_backbones("nothing*") == []
    vits = list_backbones("timm:vit_tiny*")
    assert "timm:vit_tiny_patch16_224" in vits and vits == sorted(vits)
    assert all(n.startswith("timm:vit_tiny") for n in vits)
    assert "timm:resnet18" not in list_backbones()


def test_register_backbone(registry):
    @register_backbone("tiny")
    def make_tiny(*, pretrained: bool = False, dim: int = 4) -> nn.Module:
        model = nn.Sequential(nn.Flatten(), nn.LazyLinear(dim))
        model.num_features = dim
        return model

    assert "tiny" in list_backbones() and "make_tiny" not in list_backbones()
    assert create_backbone("tiny", dim=5)(torch.randn(2, 3, 4, 4)).shape == (2, 5)
    with pytest.raises(ValueError, match="expected a new backbone name.*got 'tiny'"):
        register_backbone("tiny")(make_tiny)
    with pytest.raises(ValueError, match="without ':'"):
        register_backbone("timm:tiny")(make_tiny)
    with pytest.raises(TypeError, match="parentheses"):
        register_backbone(make_tiny)


def test_factory_without_num_features_is_rejected(registry):
    register_backbone("headless")(lambda pretrained=False: nn.Flatten())
    with pytest.raises(TypeError, match="'headless' must have an int num_features"):
        create_backbone("headless")


# ---- the normalisation each backbone's weights expect -------------------------------------

RANDOM_INIT = Preprocessing((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), None)


def test_a_pretrained_timm_model_carries_its_own_stats(timm_weights):
    """test_resnet's pretrained_cfg: mean 0.5, std 0.5, 160 px; an overlay is honoured too."""
    model = create_backbone("timm:test_resnet", pretrained=True,
                            pretrained_cfg_overlay={"file": timm_weights})  # fmt: skip
    assert model.preprocessing == Preprocessing((0.5,) * 3, (0.5,) * 3, 160)
    overlay = {"file": timm_weights, "mean": (0.1, 0.2, 0.3), "input_size": (3, 48, 48)}
    model = create_backbone("timm:test_resnet", pretrained=True, pretrained_cfg_overlay=overlay)
    assert model.preprocessing == Preprocessing((0.1, 0.2, 0.3), (0.5,) * 3, 48)


@pytest.mark.parametrize("name", [*list_backbones(), "timm:test_resnet"])
def test_random_init_keeps_the_project_default(name):
    assert create_backbone(name).preprocessing == RANDOM_INIT


def test_random_init_default_has_one_value_per_input_channel():
    assert create_backbone("small_cnn", in_chans=1).preprocessing == Preprocessing((0.5,), (0.25,))


def test_torchvision_pretrained_weights_carry_imagenet_stats(monkeypatch):
    hub = torchvision.models.resnet18().state_dict()
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", lambda self, **kw: hub)
    model = create_backbone("resnet18", pretrained=True)
    assert model.preprocessing == Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224)


def test_open_clip_towers_carry_their_size_and_pretrained_stats(tiny_checkpoint):
    clip, weights = tiny_checkpoint
    cfg = clip.visual.preprocess_cfg
    pretrained = create_backbone("open_clip:Tiny-Test-ViT", pretrained=weights)
    assert pretrained.preprocessing == Preprocessing(cfg["mean"], cfg["std"], 32)
    assert create_backbone("open_clip:Tiny-Test-ViT").preprocessing == RANDOM_INIT._replace(
        image_size=32
    )


def test_a_registered_factory_may_declare_its_stats(registry):
    declared = Preprocessing((0.2,), (0.3,), 16)

    @register_backbone()
    def declares(pretrained: bool = False) -> nn.Module:
        model = nn.Sequential(nn.Flatten())
        model.num_features, model.preprocessing = 3, declared
        return model

    @register_backbone()
    def silent(pretrained: bool = False) -> nn.Module:
        model = nn.Sequential(nn.Flatten())
        model.num_features = 3
        return model

    assert create_backbone("declares").preprocessing == declared
    assert create_backbone("silent").preprocessing == RANDOM_INIT


def _timm_simclr(timm_weights, **kwargs):
    from contrastive.methods import SimCLR

    overlay = {"file": timm_weights, "mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6)}
    backbone_kwargs = {"pretrained": True, "pretrained_cfg_overlay": overlay}
    return SimCLR(backbone="timm:test_resnet", backbone_kwargs=backbone_kwargs,
                  projector_hidden_dim=16, **kwargs).eval()  # fmt: skip


def _normalised(images, mean, std):
    shape = (1, len(mean), 1, 1)
    return (images.float() / 255 - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)


def test_views_and_embed_use_the_backbones_stats_unless_the_config_gives_its_own(timm_weights):
    from contrastive.augment import Augment, SimCLRAugment

    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    own = (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)  # the overlay's, in _timm_simclr
    model = _timm_simclr(timm_weights)
    with torch.no_grad():
        expected = model.backbone(_normalised(images, *own))
        torch.testing.assert_close(model.embed(images), expected)
    # A view with every augmentation off is the image, normalised with the backbone's stats.
    off = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=0, color_jitter=0, grayscale=0)
    model = _timm_simclr(timm_weights, augment=SimCLRAugment(**off))
    torch.testing.assert_close(model.augment(images), _normalised(images, *own))
    # Given explicitly, each of mean and std wins; the other stays the backbone's.
    model = _timm_simclr(timm_weights, augment=Augment(mean=(0.7, 0.7, 0.7)))
    torch.testing.assert_close(
        model.augment.normalize(images), _normalised(images, (0.7,) * 3, own[1])
    )
    model = _timm_simclr(timm_weights, augment=Augment(mean=(0.7,) * 3, std=(0.2,) * 3))
    torch.testing.assert_close(
        model.augment.normalize(images), _normalised(images, (0.7,) * 3, (0.2,) * 3)
    )
    with pytest.raises(ValueError, match="one value per channel"):
        Augment(mean=(0.5,), std=(0.2, 0.2, 0.2))
