"""What every image method the package exports gets, generated from ``contrastive.methods``:
a new method file (exported there) gets these tests without new test code.

- forward/backward with two views and with multi-crop: every trainable parameter gets a
  gradient, frozen and momentum parameters none;
- momentum copies: no gradient, no optimizer state, moved by EMA, buffers copied (as BYOL's);
- gradient caching (``chunk_size``): the loss, gradients and state of the whole batch;
- a checkpoint round trip (``weights_only``) that embeds as the trained model does;
- under DDP with 2 CPU processes, two steps equal to one process on the concatenated batch
  (batch statistics, Sinkhorn, centers, queues and support sets included);
- a shipped config, which test_cli.py runs through the real CLI and ``contrastive embed``.

The losses themselves are tested against the papers' loops in test_ssl_losses.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from ddp import run_ddp
from test_methods import _tiny_data, _trainer

from contrastive import distributed
from contrastive.augment import MultiCropAugment
from contrastive.checkpoints import load_method
from contrastive.ema import ema_update
from contrastive.methods import (
    ContrastiveMethod,
    MomentumMethod,
    image_methods,
    method_defaults,
    smoke_kwargs,
)

METHODS = {cls.__name__: cls for cls in image_methods().values()}
GLOBAL_BATCH = 8
LABELS = torch.tensor([0, 1, 1, 2, 2, 2, 3, 4])  # for SupCon: classes of 1, 2 and 3 images


def test_the_registry_holds_the_eleven_image_methods():
    expected = {"SimCLR", "SupCon", "BYOL", "MoCoV2", "MoCoV3", "DINO", "SwAV", "VICReg"}
    assert expected | {"BarlowTwins", "SimSiam", "NNCLR"} <= set(METHODS)
    names = {"simclr", "supcon", "byol", "moco_v2", "moco_v3", "dino", "swav", "vicreg"}
    assert names | {"barlow_twins", "simsiam", "nnclr"} <= set(image_methods())
    # Not image methods: the two-tower methods need a text tower, the bases have no loss.
    others = {"CLIP", "Conditional", "ContrastiveMethod", "MomentumMethod", "TwoTowerMethod"}
    assert not others & set(METHODS)


def test_method_defaults_follow_kwargs_to_the_base_and_the_subclass_wins():
    defaults = method_defaults(METHODS["MoCoV3"])
    assert defaults["temperature"] == 0.2  # MoCo v3's own, not its base's
    assert defaults["backbone"] == "small_cnn"  # from ContrastiveMethod, through **kwargs


def test_smoke_kwargs_shrink_only_what_a_method_has_and_never_grow_it():
    swav = smoke_kwargs(METHODS["SwAV"])
    assert swav["num_prototypes"] == 16 < method_defaults(METHODS["SwAV"])["num_prototypes"]
    assert "num_prototypes" not in smoke_kwargs(METHODS["SimCLR"])
    for cls in METHODS.values():
        defaults = method_defaults(cls)
        assert all(v <= defaults[k] for k, v in smoke_kwargs(cls).items())


def _model(name: str, seed: int = 0, **kwargs) -> ContrastiveMethod:
    cls = METHODS[name]
    torch.manual_seed(seed)
    return cls(backbone_kwargs={"width": 4}, **{**smoke_kwargs(cls), **kwargs})


def _views(seed: int, n: int = GLOBAL_BATCH, local: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(n, 3, 16, 16, generator=g) for _ in range(2)]
    return views + [torch.randn(n, 3, 8, 8, generator=g) for _ in range(local)]


def _batch(seed: int, rows: slice = slice(None), local: int = 0) -> dict:
    return {
        "views": [v[rows] for v in _views(seed, local=local)],
        "labels": {"shape": LABELS[rows]},
    }


# ---- forward / backward ----------------------------------------------------------------------


@pytest.mark.parametrize("local", [0, 2], ids=["2 views", "multi-crop"])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_trainable_parameter_gets_a_gradient_and_no_other_does(name, local):
    model = _model(name)
    model.training_loss(_batch(1, local=local))  # a first step fills queues (MoCo's is empty)
    model.training_loss(_batch(0, local=local)).backward()
    for param_name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, param_name
        else:
            assert p.grad is None, param_name


def test_multi_crop_views_reach_every_method_from_the_augmentation():
    augment = MultiCropAugment(num_local=3, local_size=8, size=16)
    images = torch.randint(0, 256, (4, 3, 24, 24), dtype=torch.uint8)
    model = _model("DINO", augment=augment)
    views = model.make_views({"image": images})
    assert [tuple(v.shape[-2:]) for v in views] == [(16, 16)] * 2 + [(8, 8)] * 3
    assert torch.isfinite(model.training_loss({"views": views}))


# ---- momentum copies --------------------------------------------------------------------------

MOMENTUM = sorted(n for n, cls in METHODS.items() if issubclass(cls, MomentumMethod))


def test_the_momentum_methods_are_found():
    assert {"BYOL", "MoCoV2", "MoCoV3", "DINO"} <= set(MOMENTUM)


@pytest.mark.parametrize("name", MOMENTUM)
def test_momentum_copies_get_no_gradient_no_optimizer_state_and_follow_by_ema(name):
    model = _model(name, base_momentum=0.5, final_momentum=0.5)
    copies = [p for target, _ in model.momentum_pairs() for p in target.parameters()]
    start = [p.clone() for p in copies]
    trainer = _trainer(max_steps=3, limit_val_batches=0)
    trainer.fit(model, _tiny_data())
    optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in copies}
    assert all(not p.requires_grad and p.grad is None for p in copies)
    assert any(not torch.equal(a, p) for a, p in zip(start, copies, strict=True))  # they moved
    for target, online in model.momentum_pairs():  # buffers copied, not averaged
        for t, o in zip(target.buffers(), online.buffers(), strict=True):
            torch.testing.assert_close(t, o)


# ---- gradient caching -------------------------------------------------------------------------


def _state(model: ContrastiveMethod) -> dict[str, torch.Tensor]:
    """Buffers a step changes besides BatchNorm's (queues, centers)."""
    return {
        k: v.clone()
        for k, v in model.state_dict().items()
        if not any(s in k for s in ("running_", "num_batches_tracked"))
        and k.split(".")[-1] in ("embeddings", "pointer", "count", "center")
    }


@pytest.mark.parametrize("name", sorted(METHODS))
def test_gradient_caching_gives_the_loss_gradients_and_state_of_the_whole_batch(name):
    # eval(): BatchNorm uses running statistics, so chunks normalise as the whole batch does.
    plain, chunked = _model(name).eval(), _model(name, chunk_size=3).eval()
    batch = _batch(0, local=2)
    for model in (plain, chunked):
        model.training_loss(_batch(1, local=2))  # a first step: queues and centers in use
        model.zero_grad()
    loss, cached = plain.training_loss(batch), chunked.training_loss(batch)
    loss.backward(), cached.backward()
    torch.testing.assert_close(cached, loss)
    for (n, p), q in zip(plain.named_parameters(), chunked.parameters(), strict=True):
        if p.requires_grad:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=n)
    for key, value in _state(plain).items():
        torch.testing.assert_close(_state(chunked)[key], value, msg=key)


# ---- checkpoints ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_checkpoint_round_trip_embeds_as_the_trained_model(name, tmp_path):
    model = _model(name)
    trainer = _trainer(max_steps=2, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(model, _tiny_data(shared_factors=["shape"]))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = METHODS[name].load_from_checkpoint(tmp_path / "m.ckpt", weights_only=True).eval()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(loaded.embed(images), model.eval().embed(images))
    # Built in Python, it loads through the commands' safe loader too (embed, export, ...).
    safe, _ = load_method(tmp_path / "m.ckpt")
    torch.testing.assert_close(safe.embed(images), model.embed(images))
    torch.testing.assert_close(_state(loaded), _state(model))  # queues, centers resume


# ---- DDP --------------------------------------------------------------------------------------

VARIANTS = {
    **{name: (name, {}, 0) for name in METHODS},
    "DINO multi-crop": ("DINO", {}, 2),
    "SwAV multi-crop + queue": ("SwAV", {"queue_size": GLOBAL_BATCH}, 2),
    "MoCoV3 tiled": ("MoCoV3", {"tiled": True, "tile_size": 3}, 0),
    "NNCLR tiled": ("NNCLR", {"tiled": True, "tile_size": 3}, 0),
    "SimCLR multi-crop": ("SimCLR", {}, 2),
}


def _two_steps(variant: str, rows: slice = slice(None)) -> list:
    """Loss and gradients of two steps as DDP takes them: gradients averaged over ranks, SGD,
    then the momentum update."""
    name, kwargs, local = VARIANTS[variant]
    # eval(): BatchNorm on running statistics, so ranks agree; float64: no summation noise.
    model = _model(name, **kwargs).eval().double()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.SGD([p for _, p in trainable], lr=0.5)
    steps = []
    for step in range(2):
        optimizer.zero_grad()
        batch = _batch(step, rows, local)
        batch["views"] = [v.double() for v in batch["views"]]
        loss = model.training_loss(batch)
        loss.backward()
        grads = [p.grad for _, p in trainable]
        loss = loss.detach()
        if distributed.is_distributed():
            for t in [loss, *grads]:
                torch.distributed.all_reduce(t)
                t /= distributed.world_size()
        optimizer.step()
        if isinstance(model, MomentumMethod):
            for target, online in model.momentum_pairs():
                ema_update(target, online, 0.5)
        steps.append((loss, {n: p.grad.clone() for n, p in trainable}))
    return steps


def _rank(rank: int, world_size: int) -> dict:
    per_rank = GLOBAL_BATCH // world_size
    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    return {variant: _two_steps(variant, rows) for variant in VARIANTS}


def test_two_processes_equal_one_process_on_the_global_batch():
    ranks = run_ddp(_rank)
    for variant in VARIANTS:
        expected = _two_steps(variant)
        for results in ranks:
            for step, ((loss, grads), (want_loss, want_grads)) in enumerate(
                zip(results[variant], expected, strict=True)
            ):
                where = f"{variant}, step {step}"
                torch.testing.assert_close(loss, want_loss, msg=where)
                for n, g in grads.items():
                    torch.testing.assert_close(
                        g,
                        want_grads[n],
                        rtol=1e-4,
                        atol=1e-5,
                        msg=lambda m, w=f"{where} {n}": f"{w}: {m}",
                    )


# ---- configs ----------------------------------------------------------------------------------

CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_has_a_shipped_config_on_the_shapes_data(name):
    paths = {
        yaml.safe_load(path.read_text())["model"]["class_path"].rpartition(".")[2]: path
        for path in CONFIGS.glob("*.yaml")
    }
    assert name in paths, f"no configs/*.yaml trains {name}; test_cli.py runs each one"
    data = yaml.safe_load(paths[name].read_text())["data"]["class_path"]
    assert data.endswith("ShapesDataModule")
