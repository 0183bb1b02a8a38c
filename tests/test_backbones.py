import pytest
import timm
import torch
import torchvision
from torch import nn

from contrastive import backbones
from contrastive.backbones import (
    BackboneWeightsError,
    UnknownBackboneError,
    create_backbone,
    list_backbones,
    register_backbone,
)

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
    with pytest.raises(ValueError, match="expected width >= 1"):
        create_backbone("small_cnn", width=0)


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
    with pytest.raises(FileNotFoundError, match="nope.pt"):
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
