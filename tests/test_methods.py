"""The base method's shared machinery, exercised through SimCLR and a minimal subclass."""

import math

import pytest
import torch
from lightning.pytorch import Trainer

from contrastive.datamodules import ShapesDataModule
from contrastive.datamodules.common import Skipped
from contrastive.methods import ContrastiveMethod, SimCLR


def _tiny_data(**kwargs) -> ShapesDataModule:
    args = dict(num_train=64, num_val=32, num_test=32, num_bank=64, batch_size=16)
    return ShapesDataModule(**{**args, **kwargs})


def _trainer(**kwargs) -> Trainer:
    args = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    return Trainer(**{**args, "enable_model_summary": False, **kwargs})


def test_bias_and_norm_parameters_get_no_weight_decay_and_lr_warms_up_then_decays():
    model = SimCLR(
        backbone_kwargs={"width": 4},
        projector_hidden_dim=16,
        optimizer=lambda groups: torch.optim.SGD(groups, lr=1.0, weight_decay=0.1),
        warmup_epochs=1,
    )
    trainer = _trainer(max_epochs=3, limit_val_batches=0)
    trainer.fit(model, _tiny_data())  # 4 steps per epoch: 4 of warmup, then 8 of cosine
    decay, no_decay = trainer.optimizers[0].param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert trainer.lr_scheduler_configs[0].interval == "step"

    configured = model.configure_optimizers()  # the same schedule, replayed step by step
    optimizer, schedule = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    seen = []
    for _ in range(12):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert seen[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # linear warmup over one epoch
    assert seen[4:] == pytest.approx([0.5 * (1 + math.cos(math.pi * s / 8)) for s in range(8)])


def test_separate_views_are_separate_batchnorm_batches_and_the_same_model_in_eval():
    torch.manual_seed(0)
    model = SimCLR(backbone_kwargs={"width": 4}, projector_hidden_dim=16, projector_dim=8)
    apart = SimCLR(
        backbone_kwargs={"width": 4}, projector_hidden_dim=16, projector_dim=8, separate_views=True
    )
    apart.load_state_dict(model.state_dict())
    views = [torch.randn(6, 3, 32, 32), torch.randn(6, 3, 32, 32) + 1.0]  # other statistics
    one_by_one = torch.stack([model.projector(model.backbone(v)) for v in views], dim=1)
    with torch.no_grad():  # training mode: BatchNorm uses each forward's own batch
        torch.testing.assert_close(apart.training_embeddings({"views": views})["z"], one_by_one)
        together = model.training_embeddings({"views": views})["z"]
        assert not torch.allclose(together, one_by_one, atol=1e-3)  # one batch of 12 mixes them
        apart.load_state_dict(model.state_dict())  # the same running statistics, in eval mode
        model.eval(), apart.eval()  # no batch statistics at all, so no difference
        torch.testing.assert_close(
            apart.training_embeddings({"views": views})["z"],
            model.training_embeddings({"views": views})["z"],
        )


def test_embed_returns_backbone_features_for_uint8_images():
    model = SimCLR(backbone_kwargs={"width": 4}, projector_hidden_dim=16).eval()
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    features = model.embed(images)
    assert features.shape == (5, model.backbone.num_features)
    torch.testing.assert_close(features, model.embed(images.float() / 255))


def test_training_batches_get_two_views_of_the_generator_view():
    model = SimCLR(backbone_kwargs={"width": 4}, projector_hidden_dim=16)
    image = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    view = torch.full((2, 3, 32, 32), 255, dtype=torch.uint8)
    first, second = model.make_views({"image": image, "view": view})
    assert first.mean() < second.mean()  # each source is augmented on its own


def test_a_subclass_implements_only_its_loss():
    class Minimal(ContrastiveMethod):
        def training_loss(self, batch):
            first, second = batch["views"]
            return (self.backbone(first) - self.backbone(second)).pow(2).mean()

    model = Minimal(backbone_kwargs={"width": 4})
    trainer = _trainer(max_steps=2, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(model, _tiny_data())
    assert trainer.global_step == 2

    with pytest.raises(NotImplementedError, match="training_loss"):
        ContrastiveMethod(backbone_kwargs={"width": 4}).training_loss({})


def test_a_checkpoint_restores_the_normalisation_its_encoder_expects(tmp_path):
    from contrastive.augment import Augment

    model = SimCLR(
        backbone_kwargs={"width": 4},
        projector_hidden_dim=16,
        augment=Augment(mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5)),
    )
    trainer = _trainer(max_steps=1, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(model, _tiny_data())
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = SimCLR.load_from_checkpoint(tmp_path / "m.ckpt", weights_only=True).eval()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(loaded.embed(images), model.eval().embed(images))


def test_a_batch_whose_samples_were_all_skipped_gives_a_zero_loss_on_every_parameter():
    model = SimCLR(backbone_kwargs={"width": 4}, projector_hidden_dim=16)
    loss = model.training_step({"skipped": []}, 0)  # what Collate gives when all are bad
    loss.backward()  # DDP ranks reach the gradient sync as usual
    assert loss.item() == 0.0
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


@pytest.mark.parametrize(
    "augment, view, warned",
    [(None, False, True), (None, True, False), ("simclr", False, False)],
    ids=["identical", "generator view", "augmented"],
)
def test_identical_views_are_warned_about_at_fit_start(augment, view, warned, recwarn):
    from contrastive.augment import SimCLRAugment

    model = SimCLR(
        backbone_kwargs={"width": 4},
        projector_hidden_dim=16,
        augment=SimCLRAugment() if augment else None,
    )
    trainer = _trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(model, _tiny_data(shared_factors=["shape"] if view else None))
    messages = [str(w.message) for w in recwarn if "views of each training image" in str(w.message)]
    assert len(messages) == int(warned)  # once, at the first batch


def test_chunk_size_is_a_base_option_that_needs_the_two_halves():
    class LossOnly(ContrastiveMethod):
        def training_loss(self, batch):
            return self.backbone(batch["views"][0]).mean()

    with pytest.raises(ValueError, match="chunk_size needs LossOnly to implement"):
        LossOnly(backbone_kwargs={"width": 4}, chunk_size=4)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        SimCLR(backbone_kwargs={"width": 4}, chunk_size=0)
    assert SimCLR(backbone_kwargs={"width": 4}, chunk_size=4).chunk_size == 4


def test_views_of_one_size_share_a_forward_and_multi_crop_sizes_get_one_each():
    from contrastive.methods.base import forward_views

    calls = []

    def network(x):
        calls.append(tuple(x.shape))
        return x.mean(dim=(2, 3))

    views = [torch.randn(3, 3, 16, 16)] * 2 + [torch.randn(3, 3, 8, 8)] * 3
    out = forward_views(network, views)
    assert calls == [(6, 3, 16, 16), (9, 3, 8, 8)] and out.shape == (15, 3)
    torch.testing.assert_close(out, torch.cat([v.mean(dim=(2, 3)) for v in views]))
    calls.clear()
    forward_views(network, views, separate=True)
    assert len(calls) == 5


class _SkipFirst(torch.utils.data.Dataset):
    """A split whose first sample cannot be used."""

    def __init__(self, dataset, name: str) -> None:
        self.dataset, self.name = dataset, name

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return Skipped(f"{self.name}:{i}", "bad file") if i == 0 else self.dataset[i]


class _SkippingShapes(ShapesDataModule):
    def setup(self, stage=None) -> None:
        super().setup(stage)
        for split in ("train", "val"):
            self._datasets[split] = _SkipFirst(self._datasets[split], split)


def test_each_stage_reports_its_own_skipped_samples(recwarn):
    data = _SkippingShapes(num_train=64, num_val=32, num_test=32, num_bank=64, batch_size=16)
    model = SimCLR(backbone_kwargs={"width": 4}, projector_hidden_dim=16)
    # Validation at the epoch's end runs inside the train epoch, before its end hook.
    _trainer(max_epochs=1, num_sanity_val_steps=0, limit_train_batches=4).fit(model, data)
    lines = [str(w.message) for w in recwarn if "skipped" in str(w.message)]
    assert any(line.startswith("train epoch 0: skipped 1 bad samples") for line in lines)
    assert any(line.startswith("validation at step 4: skipped 1 bad samples") for line in lines)
    assert all("train:0" not in line for line in lines if line.startswith("validation"))
