import warnings

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer

from contrastive.checkpoints import CheckpointError, resolve_checkpoint
from contrastive.datamodules import ShapesTripletDataModule
from contrastive.methods import CLIP, Conditional
from contrastive.text import OpenCLIPText
from tests.ddp import run_ddp


def text_tower(width: int = 32) -> OpenCLIPText:
    torch.manual_seed(1)
    return OpenCLIPText("ViT-B-32", width=width, layers=1, heads=2, context_length=16, embed_dim=24)


def model(conditioning: str = "project", **kwargs) -> Conditional:
    torch.manual_seed(0)
    kwargs = {"backbone": "small_cnn", "backbone_kwargs": {"width": 4}, **kwargs}
    if conditioning == "token":
        kwargs["backbone"] = "timm:vit_tiny_patch16_224"
        kwargs["backbone_kwargs"] = dict(
            img_size=16, patch_size=8, depth=1, embed_dim=16, num_heads=2
        )
    return Conditional(
        text_tower=text_tower(), conditioning=conditioning, embed_dim=8,
        conditioning_kwargs={"hidden_dim": 16} if conditioning != "token" else None, **kwargs,
    )  # fmt: skip


TEXTS = ["same color", "same shape", "same color", "both are red", "same shape", "same color"]


def batch(n: int = 6, size: int = 16, negatives: bool = True, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    images = [
        torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8) for _ in "apn"
    ]
    out = {"image": images[0], "view": images[1], "text": TEXTS[:n], "condition": ["c"] * n}
    if negatives:
        out["negative"] = images[2]
        out["has_negative"] = torch.tensor([True, False, True, True, False, True][:n])
    return out


def reference_loss(m: Conditional, b: dict) -> torch.Tensor:
    """InfoNCE written out pair by pair: anchor i against every positive j and every real
    negative j; every candidate conditioned on the anchor's text (head mechanisms) or on its
    own row's text (token); both directions averaged."""
    views = [m.augment.normalize(b[k]) for k in ("image", "view", "negative")]
    x = [m._inputs(v) for v in views]
    t = m.encode_text(b["text"])
    n = len(t)

    def f(inputs, text):  # one image under one text, a unit vector
        return F.normalize(m.conditioning(inputs[None], text[None])[0], dim=-1)

    def direction(q, k):
        total = 0.0
        for i in range(n):
            own = m.conditioning.pairwise_negatives
            cands = [f(k[j], t[i] if own else t[j]) for j in range(n)]
            cands += [f(x[2][j], t[i] if own else t[j]) for j in range(n) if b["has_negative"][j]]
            logits = torch.stack([f(q[i], t[i]) @ c for c in cands]) / m.temperature
            total = total - torch.log_softmax(logits, 0)[i]
        return total / n

    return (direction(x[0], x[1]) + direction(x[1], x[0])) / 2


@pytest.mark.parametrize("conditioning", ["project", "film", "combiner", "token"])
def test_loss_matches_the_pair_by_pair_reference_and_trains_only_the_head(conditioning):
    # In eval mode, so the trunk's BatchNorm uses the same statistics for one image at a time.
    m = model(conditioning).eval()
    b = batch()
    b["views"] = m.make_views(b)
    loss = m.training_loss(b)
    torch.testing.assert_close(loss, reference_loss(m, b), rtol=1e-5, atol=1e-6)
    loss.backward()
    towers = [m.backbone, m.image_projection, m.text_tower]
    assert all(p.grad is None for t in towers for p in t.parameters())
    assert all(p.grad is not None for p in m.conditioning.parameters())


def test_frozen_towers_stay_in_eval_mode_and_a_fine_tuned_one_trains():
    m = model(freeze_text_tower=False).train()  # image tower frozen (the default), text not
    assert not any(x.training for x in m.backbone.modules())  # fixed BatchNorm statistics
    assert all(x.training for x in m.text_tower.modules())
    assert all(x.training for x in m.conditioning.modules())
    assert not any(x.training for x in model().train().text_tower.modules())


def test_a_fit_on_frozen_towers_and_projections_is_not_warned_of_eval_mode():
    data = ShapesTripletDataModule(image_size=16, num_train=16, batch_size=8)
    trainer = Trainer(
        max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model(), data)  # both towers and their projections frozen, in eval mode
    assert not [w for w in caught if "in eval mode" in str(w.message)]


def test_without_negatives_the_loss_is_plain_info_nce():
    m = model(hard_negatives=False, symmetric=False).eval()
    b = batch()
    b["views"] = m.make_views(b)
    assert len(b["views"]) == 2
    x = [m.condition_inputs(b[k]) for k in ("image", "view")]
    t = m.encode_text(b["text"])
    q = m.condition_from(x[0], t)
    k = F.normalize(m.conditioning.pairwise(x[1], t), dim=-1)  # (N, N, D)
    logits = torch.einsum("nd,nmd->nm", q, k) / m.temperature
    torch.testing.assert_close(m.training_loss(b), F.cross_entropy(logits, torch.arange(6)))


def _ddp_loss_and_grads(rank: int, world_size: int, conditioning: str) -> dict:
    m = model(conditioning).eval()  # BatchNorm statistics per rank would differ (no SyncBN)
    b = batch()
    rows = slice(rank * 3, rank * 3 + 3)
    local = {k: v[rows] for k, v in b.items()}
    local["views"] = m.make_views(local)
    loss = m.training_loss(local)
    loss.backward()
    return {n: p.grad for n, p in m.conditioning.named_parameters()} | {"loss": loss.detach()}


@pytest.mark.parametrize("conditioning", ["project", "token"])
def test_ddp_equals_one_process_on_the_global_batch(conditioning):
    ranks = run_ddp(_ddp_loss_and_grads, conditioning)
    m = model(conditioning).eval()
    b = batch()
    b["views"] = m.make_views(b)
    loss = m.training_loss(b)
    loss.backward()
    # The global loss is the mean of the ranks' losses; DDP averages the gradients.
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss.detach())
    for name, p in m.conditioning.named_parameters():
        torch.testing.assert_close(
            (ranks[0][name] + ranks[1][name]) / 2, p.grad, rtol=1e-4, atol=1e-5
        )


def test_embed_is_the_unconditioned_image_and_condition_the_conditioned_one():
    m = model().eval()
    images = batch()["image"]
    plain = m.embed(images)
    features = m.backbone(m.augment.normalize(images))
    torch.testing.assert_close(plain, m.image_projection(features))
    torch.testing.assert_close(m.encode_image(images), plain)
    one = m.condition(images, "same color")
    assert one.shape == (6, 8)
    torch.testing.assert_close(one.norm(dim=-1), torch.ones(6))
    torch.testing.assert_close(m.condition(images, ["same color"] * 6), one)
    text = m.encode_text(["same color"] * 6)
    torch.testing.assert_close(m.condition_from(m.condition_inputs(images), text), one)
    assert not torch.allclose(m.condition(images, "same shape"), one)
    with pytest.raises(ValueError, match="one text per image"):
        m.condition(images, ["a", "b"])


def test_a_frozen_text_tower_embeds_each_distinct_text_once():
    m = model()
    calls = []
    encode = m.text_tower.encode
    m.text_tower.encode = lambda texts: calls.append(list(texts)) or encode(texts)
    first = m.encode_text(TEXTS)
    again = m.encode_text(TEXTS[::-1])
    assert calls == [["same color", "same shape", "both are red"]]
    torch.testing.assert_close(again, first.flip(0))


def clip_checkpoint(tmp_path, width: int = 4) -> tuple[CLIP, str]:
    torch.manual_seed(3)
    clip = CLIP(text_tower=text_tower(), backbone="small_cnn", backbone_kwargs={"width": width},
                embed_dim=16)  # fmt: skip
    path = tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": clip.state_dict()}, path)
    return clip, str(path)


def test_towers_are_loaded_from_a_clip_checkpoint_or_its_run_folder(tmp_path):
    clip, path = clip_checkpoint(tmp_path)
    assert resolve_checkpoint(str(tmp_path / "run")) == resolve_checkpoint(path)
    m = model(towers=str(tmp_path / "run"), image_embed_dim=16, text_projection=True)
    for name in ("backbone", "image_projection", "text_tower", "text_projection"):
        theirs, ours = getattr(clip, name).state_dict(), getattr(m, name).state_dict()
        assert all(torch.equal(theirs[k], ours[k]) for k in theirs), name
    images = batch()["image"]
    torch.testing.assert_close(m.embed(images), clip.eval().encode_image(images))


def test_towers_that_do_not_fit_are_one_clear_error(tmp_path):
    _, path = clip_checkpoint(tmp_path, width=8)
    with pytest.raises(RuntimeError, match=r"does not fit this model's backbone: wrong shapes"):
        model(towers=path, image_embed_dim=16, text_projection=True)
    with pytest.raises(CheckpointError, match="towers: no checkpoint file at"):
        model(towers=str(tmp_path / "run" / "version_0" / "checkpoints" / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoints/last.ckpt under the folder"):
        model(towers=str(tmp_path / "empty"))


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="temperature"):
        model(temperature=0)
    with pytest.raises(ValueError, match="image_embed_dim"):
        model(image_embed_dim=7)


def test_fine_tuning_a_tower_is_an_option():
    m = model(freeze_image_tower=False).eval()
    b = batch()
    b["views"] = m.make_views(b)
    m.training_loss(b).backward()
    assert all(p.grad is not None for p in m.backbone.parameters())
    assert all(p.grad is None for p in m.text_tower.parameters())  # still frozen
    assert m.train().backbone.training and not m.text_tower.training


def test_restoring_a_checkpoint_does_not_read_the_towers_again(tmp_path):
    from contrastive.methods.conditional import _RESTORING

    token = _RESTORING.set(True)  # as inside Conditional.load_from_checkpoint
    try:
        model(towers=str(tmp_path / "moved-away"))  # the checkpoint's weights will be loaded
    finally:
        _RESTORING.reset(token)
    with pytest.raises(CheckpointError, match="towers: no checkpoint file at"):
        model(towers=str(tmp_path / "moved-away"))


def test_the_matched_budget_head_never_reads_text(monkeypatch):
    """``condition_on_text: false``: the same trainable parameters, trained on the same
    triplets, with no condition: the text tower is never run and the text changes nothing."""
    m = model(condition_on_text=False)
    conditioned = model()
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable == [n for n, p in conditioned.named_parameters() if p.requires_grad]

    def refuse(texts):
        raise AssertionError(f"the matched-budget head read text: {texts}")

    monkeypatch.setattr(m.text_tower, "encode", refuse)
    b = batch()
    b["views"] = m.make_views(b)
    m.training_loss(b).backward()
    assert all(p.grad is not None for p in m.conditioning.parameters())
    m.eval()
    images, inputs = b["image"], m.condition_inputs(b["image"])
    text = torch.randn(len(images), 24)
    torch.testing.assert_close(m.condition_from(inputs, text), m.condition_from(inputs, -text))
    torch.testing.assert_close(
        m.condition_from(inputs, text), m.condition_from(inputs, torch.zeros_like(text))
    )


def test_the_image_cache_runs_the_frozen_tower_once_per_image_and_changes_nothing():
    cached, plain = model(image_cache_size=100).eval(), model().eval()
    calls = []
    cached.backbone.register_forward_hook(lambda m, args, out: calls.append(len(out)))
    b = batch()
    b["image"][3] = b["view"][0]  # an image seen twice in the batch
    losses = []
    for m in (cached, cached, plain):
        b["views"] = m.make_views(b)
        loss = m.training_loss(b)
        loss.backward()
        losses.append((loss, [p.grad.clone() for p in m.conditioning.parameters()]))
        m.zero_grad()
    assert calls == [6, 5, 6]  # per view, its images not seen before; then none again
    for loss, grads in losses[1:]:
        torch.testing.assert_close(loss, losses[0][0])
        torch.testing.assert_close(grads, losses[0][1])
    assert len(cached._image_cache) == 17
    assert model(image_cache_size=100, freeze_image_tower=False)._image_cache.size == 0


def test_the_caches_are_emptied_when_the_towers_change_or_move():
    m = model(image_cache_size=100).eval()
    m.condition(batch()["image"], "same color")
    assert len(m._image_cache) == 6 and len(m._text_cache) == 1
    m.load_state_dict(m.state_dict())
    assert len(m._image_cache) == 0 and len(m._text_cache) == 0
    m.condition(batch()["image"], "same color")
    m.double()  # the rows were float32 (or on another device)
    assert len(m._image_cache) == 0 and len(m._text_cache) == 0
    assert m.condition(batch()["image"], "same color").dtype == torch.float64


@pytest.mark.parametrize("name", ["image_cache_size", "text_cache_size"])
@pytest.mark.parametrize("size", [-1, 2.5, True])
def test_a_cache_size_must_be_a_count(name, size):
    with pytest.raises(ValueError, match=f"{name} must be a count >= 0, got {size}"):
        model(**{name: size})
