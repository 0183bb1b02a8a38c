"""What each of the eight methods does beyond its loss: MoCo's queue and v3's scaled loss, DINO's
center, temperature warmup and frozen last layer, SwAV's prototypes and queue, NNCLR's support
set, multi-crop in BYOL and SimCLR. The generated tests are in test_every_method.py."""

import pytest
import torch
import torch.nn.functional as F
from test_every_method import _batch, _model
from test_methods import _tiny_data, _trainer

from contrastive.losses import info_nce, moco_loss


def test_moco_v2_classifies_against_the_queue_then_queues_both_views_keys():
    model = _model("MoCoV2", queue_size=64)
    batch = _batch(0)
    embeddings = model.training_embeddings(batch)
    queue = torch.randn(5, 8)
    model.queue.push(queue)
    loss = model.loss_from_embeddings(embeddings, batch)
    q, k = embeddings["q"], embeddings["k"]
    expected = (
        moco_loss(q[:, 1], k[:, 0], queue, 0.2) + moco_loss(q[:, 0], k[:, 1], queue, 0.2)
    ) / 2
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(model.queue.negatives(), torch.cat([queue, k[:, 0], k[:, 1]]))


def test_moco_v3_is_the_authors_symmetric_loss_scaled_by_2t():
    model = _model("MoCoV3", temperature=0.5)
    batch = _batch(0)
    embeddings = model.training_embeddings(batch)
    q, k = embeddings["q"], embeddings["k"]

    def ctr(q, k):  # the authors' contrastive_loss: CE of q against every key, times 2T
        logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / 0.5
        return F.cross_entropy(logits, torch.arange(len(q))) * 2 * 0.5

    expected = ctr(q[:, 0], k[:, 1]) + ctr(q[:, 1], k[:, 0])
    torch.testing.assert_close(model.loss_from_embeddings(embeddings, batch), expected)


def test_dino_centres_with_an_ema_of_the_teacher_mean_and_warms_up_its_temperature():
    model = _model("DINO", center_momentum=0.9, teacher_temperature_warmup_epochs=4)
    model.teacher_temperature, model.warmup_teacher_temperature = 0.07, 0.03
    batch = _batch(0)
    embeddings = model.training_embeddings(batch)
    model.loss_from_embeddings(embeddings, batch)
    mean = embeddings["teacher"].mean(dim=(0, 1))  # (K,) over rows and global views
    torch.testing.assert_close(model.center, 0.1 * mean)  # from zero: 0.9 * 0 + 0.1 * mean
    temperatures = []
    for epoch in range(6):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(type(model), "current_epoch", property(lambda self, e=epoch: e))
            temperatures.append(model.current_teacher_temperature())
    assert temperatures == pytest.approx([0.03, 0.04, 0.05, 0.06, 0.07, 0.07])


def test_dino_keeps_its_prototypes_still_for_the_first_epochs_and_embeds_either_network():
    model = _model("DINO", freeze_last_layer_epochs=1, base_momentum=0.5, final_momentum=0.5)
    start = model.head.prototypes.detach().clone()
    trainer = _trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(model, _tiny_data(shared_factors=["shape"]))
    torch.testing.assert_close(model.head.prototypes, start)  # epoch 0: no update
    assert not torch.equal(model.head.mlp[0].weight, model.teacher_head.mlp[0].weight)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    model.eval()
    torch.testing.assert_close(model.embed(images), model.backbone(model.augment.normalize(images)))
    model.representation = "teacher"
    torch.testing.assert_close(
        model.embed(images), model.teacher_backbone(model.augment.normalize(images))
    )


def test_dino_prototypes_are_unit_norm_unless_their_scale_is_learnt():
    model = _model("DINO")
    head = model.head
    x = torch.randn(3, model.backbone.num_features)
    bottleneck = F.normalize(head.mlp(x), dim=1)
    expected = bottleneck @ F.normalize(head.prototypes, dim=1).T  # cosines to the prototypes
    torch.testing.assert_close(head(x), expected)
    assert not head.scale.requires_grad
    assert _model("DINO", norm_last_layer=False).head.scale.requires_grad
    normed = _model("DINO", projector_batch_norm=True).head.mlp  # DINO's use_bn_in_head
    kinds = [type(m).__name__ for m in normed]
    assert kinds == ["Linear", "BatchNorm1d", "GELU"] * 2 + ["Linear"]


def test_swav_normalises_its_prototypes_and_freezes_them_for_the_first_steps():
    model = _model("SwAV", freeze_prototypes_steps=2)
    with torch.no_grad():
        model.prototypes.weight.mul_(3.0)
    seen = []
    original = type(model).on_after_backward

    def record(self):
        original(self)
        seen.append(self.prototypes.weight.grad is None)

    model.on_after_backward = record.__get__(model)
    trainer = _trainer(max_steps=4, limit_val_batches=0)
    trainer.fit(model, _tiny_data(shared_factors=["shape"]))
    assert seen == [True, True, False, False]
    model.on_train_batch_start(None, 0)
    torch.testing.assert_close(model.prototypes.weight.norm(dim=1), torch.ones(16))


def test_swav_uses_its_queue_once_full_and_fills_it_from_the_start_epoch():
    model = _model("SwAV", queue_size=16, queue_start_epoch=0)
    batch = _batch(0)  # 8 images: two steps fill a queue of 16
    embeddings = model.training_embeddings(batch)
    scores = embeddings["scores"][:, 0].detach()
    without = model._codes(scores, 0)
    model.loss_from_embeddings(embeddings, batch)
    torch.testing.assert_close(model._codes(scores, 0), without)  # 8 of 16 rows: not yet used
    model.loss_from_embeddings(model.training_embeddings(_batch(1)), _batch(1))
    assert model.queues[0].is_full
    assert not torch.allclose(model._codes(scores, 0), without)  # the queue joins Sinkhorn
    late = _model("SwAV", queue_size=16, queue_start_epoch=3)
    late.loss_from_embeddings(late.training_embeddings(batch), batch)
    assert int(late.queues[0].count) == 0  # epoch 0 < 3: nothing queued


def test_nnclr_takes_the_nearest_support_embedding_as_the_positive():
    model = _model("NNCLR", queue_size=32)
    batch = _batch(0)
    support = torch.randn(6, 8)
    model.support.push(support)
    embeddings = model.training_embeddings(batch)
    z, p = embeddings["z"], embeddings["p"]
    loss = model.loss_from_embeddings(embeddings, batch)
    ids = torch.arange(8)

    def nearest(rows):
        return support[(F.normalize(rows, dim=1) @ F.normalize(support, dim=1).T).argmax(1)]

    expected = (
        info_nce(nearest(z[:, 0]), p[:, 1], ids, ids, 0.1)
        + info_nce(nearest(z[:, 1]), p[:, 0], ids, ids, 0.1)
    ) / 2
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(model.support.negatives(), torch.cat([support, z[:, 0]]))


@pytest.mark.parametrize("name", ["SimCLR", "BYOL"])
def test_simclr_and_byol_take_multi_crop_views(name):
    model = _model(name)
    batch = _batch(0, local=3)
    embeddings = model.training_embeddings(batch)
    assert max(e.shape[1] for e in embeddings.values()) == 5  # every view is embedded
    assert torch.isfinite(model.loss_from_embeddings(embeddings, batch))
    if name == "SimCLR":  # every other view of the image is a positive
        z = embeddings["z"]  # (B, 5, D)
        anchors = z.transpose(0, 1).flatten(0, 1)
        ids = torch.arange(8).repeat(5)
        expected = info_nce(anchors, anchors, ids, ids, 0.1, torch.arange(40))
        torch.testing.assert_close(model.loss_from_embeddings(embeddings, batch), expected)


def test_moco_v3_trains_a_vit_from_timm():
    from contrastive.methods import MoCoV3

    vit = dict(img_size=16, patch_size=8, depth=1, embed_dim=32, num_heads=2)
    model = MoCoV3(
        backbone="timm:vit_tiny_patch16_224",
        backbone_kwargs=vit,
        projector_hidden_dim=16,
        projector_dim=8,
        predictor_hidden_dim=16,
        projector_layers=3,  # the paper's projector for ViTs
    )
    model.training_loss(_batch(0)).backward()  # 16 px views
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "name, bad, message",
    [
        ("MoCoV2", {"temperature": 0.0}, "temperature"),
        ("MoCoV2", {"base_momentum": 0.9, "final_momentum": 0.5}, "base_momentum"),
        ("MoCoV3", {"tile_size": 0}, "tile_size"),
        ("DINO", {"student_temperature": 0.0}, "temperatures"),
        ("DINO", {"center_momentum": 1.5}, "center_momentum"),
        ("SwAV", {"sinkhorn_iterations": 0}, "sinkhorn_iterations"),
        ("SwAV", {"queue_size": -1}, "queue_size"),
        ("BarlowTwins", {"lambda_offdiag": -1.0}, "lambda_offdiag"),
        ("NNCLR", {"temperature": -0.1}, "temperature"),
    ],
)
def test_bad_hyper_parameters_are_named(name, bad, message):
    with pytest.raises(ValueError, match=message):
        _model(name, **bad)
