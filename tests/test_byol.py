import pytest
import torch
from test_methods import _tiny_data, _trainer

from contrastive.losses import byol_loss
from contrastive.methods import BYOL


def _byol(**kwargs) -> BYOL:
    torch.manual_seed(0)
    args = dict(backbone_kwargs={"width": 4}, projector_hidden_dim=16, projector_dim=8)
    return BYOL(**{**args, "predictor_hidden_dim": 16, **kwargs})


def _views(b: int = 6) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(b, 3, 32, 32, generator=g) for _ in range(2)]


@pytest.mark.parametrize("separate_views", [False, True])
def test_loss_matches_the_paper_symmetrised_per_view(separate_views):
    model = _byol(separate_views=separate_views)
    v1, v2 = _views()
    v2 = v2 + 1.0  # other batch statistics: the two layouts' BatchNorm batches differ
    loss = model.training_loss({"views": [v1, v2]})

    def online(v):
        return model.predictor(model.projector(model.backbone(v)))

    def target(v):
        return model.target_projector(model.target_backbone(v))

    # Grill et al. eq. 2: ||q_norm - z'_norm||^2 = 2 - 2 cos, for (v1 -> v2) and (v2 -> v1).
    def regress(p, z):
        p, z = torch.nn.functional.normalize(p, dim=1), torch.nn.functional.normalize(z, dim=1)
        return (p - z).pow(2).sum(1)

    if separate_views:  # a forward per view, as BYOL's own code does: a BatchNorm batch each
        (p1, p2), (z1, z2) = [online(v) for v in (v1, v2)], [target(v) for v in (v1, v2)]
    else:  # one forward over both views (BatchNorm sees the 2B batch)
        both = torch.cat([v1, v2])
        (p1, p2), (z1, z2) = online(both).chunk(2), target(both).chunk(2)
    expected = torch.cat([regress(p1, z2.detach()), regress(p2, z1.detach())]).mean()
    torch.testing.assert_close(loss, expected)
    other = _byol(separate_views=not separate_views)
    assert not torch.allclose(other.training_loss({"views": [v1, v2]}), loss, atol=1e-4)
    other.load_state_dict(model.state_dict())  # the same running statistics, in eval mode
    model.eval(), other.eval()  # and no batch statistics: the layouts agree
    torch.testing.assert_close(
        other.training_loss({"views": [v1, v2]}), model.training_loss({"views": [v1, v2]})
    )
    assert byol_loss(p1, p1).item() == pytest.approx(0.0, abs=1e-6)


def test_no_gradient_reaches_the_target_and_every_online_parameter_gets_one():
    model = _byol()
    model.training_loss({"views": _views()}).backward()
    for name, p in model.named_parameters():
        if name.startswith("target_"):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_training_updates_the_target_by_ema_and_gives_it_no_optimizer_state():
    model = _byol(base_momentum=0.5, final_momentum=1.0)
    start = [p.clone() for p in model.target_backbone.parameters()]
    trainer = _trainer(max_steps=4, limit_val_batches=0)
    trainer.fit(model, _tiny_data())
    optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    target = list(model.target_backbone.parameters()) + list(model.target_projector.parameters())
    assert not optimized & {id(p) for p in target}
    moved = [
        not torch.equal(a, b)
        for a, b in zip(start, model.target_backbone.parameters(), strict=True)
    ]
    assert all(moved)
    assert model.momentum == pytest.approx(1.0)  # the schedule's end at the last step


def test_representation_layer_is_configurable():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    assert _byol().eval().embed(images).shape == (4, 32)  # pooled backbone features
    assert _byol(representation="projector").eval().embed(images).shape == (4, 8)


def test_bad_momenta_are_rejected():
    with pytest.raises(ValueError, match="base_momentum"):
        _byol(base_momentum=0.9, final_momentum=0.5)


def test_the_target_moves_once_per_optimizer_step_under_gradient_accumulation():
    model = _byol(base_momentum=0.5, final_momentum=0.5)  # constant: every update shows
    updates = []
    original = BYOL.on_train_batch_end

    def counting(self, outputs, batch, batch_idx):
        before = next(self.target_backbone.parameters()).clone()
        original(self, outputs, batch, batch_idx)
        updates.append(not torch.equal(before, next(self.target_backbone.parameters())))

    model.on_train_batch_end = counting.__get__(model)
    trainer = _trainer(max_steps=2, accumulate_grad_batches=2, limit_val_batches=0)
    trainer.fit(model, _tiny_data())
    assert updates == [False, True, False, True]  # 4 micro-batches, 2 optimizer steps
