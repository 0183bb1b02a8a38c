"""CLIP, SigLIP and LiT: towers, gradients, the temperature, tokenization in the loader, the
text cache, and evaluation through fit and test."""

import math
import warnings

import pytest
import torch
from lightning.pytorch import Trainer

from contrastive.datamodules import ShapesDataModule
from contrastive.losses import clip_loss
from contrastive.methods import CLIP
from contrastive.text import OpenCLIPText, SentenceTransformerText


def _text(**kwargs) -> OpenCLIPText:
    return OpenCLIPText(
        width=16, layers=1, heads=2, context_length=32, **{"embed_dim": 16, **kwargs}
    )


def _clip(**kwargs) -> CLIP:
    torch.manual_seed(0)
    args = dict(text_tower=_text(), embed_dim=16, backbone_kwargs={"width": 4})
    return CLIP(**{**args, **kwargs})


def _data(**kwargs) -> ShapesDataModule:
    args = dict(num_train=64, num_val=32, num_test=64, num_bank=64, batch_size=16)
    return ShapesDataModule(**{**args, **kwargs})


def _trainer(**kwargs) -> Trainer:
    args = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    return Trainer(**{**args, "enable_model_summary": False, **kwargs})


def _batch(n: int = 6) -> dict:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return {"image": images, "caption": [f"a shape number {i}" for i in range(n)]}


def _loss(model: CLIP, batch: dict) -> torch.Tensor:
    batch = {**batch, "views": model.make_views(batch)}
    return model.training_loss(batch)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"loss": "siglip"},
        {"freeze_text_tower": True},
        {"freeze_image_tower": True},
        {"ssl_weight": 1.0},
    ],
    ids=["clip", "siglip", "frozen text", "frozen image", "slip"],
)
def test_gradients_reach_every_trainable_part_and_no_frozen_one(kwargs):
    model = _clip(**kwargs).train()
    _loss(model, _batch()).backward()
    frozen = [model.text_tower] if kwargs.get("freeze_text_tower") else []
    frozen += [model.backbone] if kwargs.get("freeze_image_tower") else []
    frozen_ids = {id(p) for m in frozen for p in m.parameters()}
    for name, param in model.named_parameters():
        if id(param) in frozen_ids:
            assert not param.requires_grad and param.grad is None, name
        else:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    for tower in frozen:  # no dropout, no BatchNorm statistics updates, whatever train() says
        assert not any(m.training for m in tower.modules())


def test_views_become_pairs_of_their_own_and_slip_adds_an_image_loss():
    batch = {**_batch(4), "view": _batch(4)["image"].flip(-1)}
    batch["view_caption"] = [f"a mirrored shape {i}" for i in range(4)]
    model = _clip().eval()
    assert len(model.make_views(batch)) == 2  # the generator view, augmented
    slip = _clip(ssl_weight=0.5, ssl_projector_dim=24).eval()
    assert slip.ssl_projector(torch.randn(2, slip.backbone.num_features)).shape == (2, 24)
    assert len(slip.make_views(_batch(4))) == 2  # no generator view: the image again
    with_views = _loss(model, batch)
    images = model.image_projection(model.backbone(torch.cat(model.make_views(batch))))  # 8 pairs
    texts = model.encode_text(batch["caption"] + batch["view_caption"])
    want = clip_loss(images, texts, images, texts, torch.arange(8), model.logit_scale())
    torch.testing.assert_close(with_views, want)
    plain = _clip(ssl_weight=0.0).eval()
    slip_loss, clip_only = _loss(slip, batch), _loss(plain, batch)
    image_loss = slip._image_loss(slip.backbone(torch.cat(slip.make_views(batch))), 4)
    torch.testing.assert_close(slip_loss, clip_only + 0.5 * image_loss)


def test_caption_grad_scale_scales_only_the_image_text_gradient_into_the_backbone():
    batch = {**_batch(4), "view": _batch(4)["image"].flip(-1)}
    batch["view_caption"] = [f"a mirrored shape {i}" for i in range(4)]

    def grads(scale: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model = _clip(ssl_weight=0.5, caption_grad_scale=scale).eval()  # no batch statistics
        loss = _loss(model, batch)
        loss.backward()
        named = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), named

    (loss0, slip_only), (loss1, whole), (loss, quarter) = grads(0.0), grads(1.0), grads(0.25)
    torch.testing.assert_close(loss, loss1)  # the forward pass is CLIP's
    torch.testing.assert_close(loss0, loss1)
    for name, grad in quarter.items():
        if name.startswith("backbone."):  # SLIP's gradient + a quarter of the captions'
            want = slip_only[name] + 0.25 * (whole[name] - slip_only[name])
            torch.testing.assert_close(grad, want, rtol=1e-4, atol=1e-6)
        else:  # projections, text tower, temperature: the whole gradient at any scale
            torch.testing.assert_close(grad, whole[name])
    assert any((whole[n] - slip_only[n]).abs().max() > 1e-4 for n in slip_only if "backbone" in n)
    without_slip = _clip(caption_grad_scale=0.0)
    _loss(without_slip, batch).backward()
    assert all(p.grad is None for p in without_slip.backbone.parameters())
    with pytest.raises(ValueError, match="caption_grad_scale must be >= 0"):
        _clip(caption_grad_scale=-1.0)


def test_the_logit_scale_starts_as_in_the_papers_and_is_clamped_at_100():
    assert _clip().logit_scale().item() == pytest.approx(1 / 0.07)
    assert _clip(init_temperature=0.02).logit_scale().item() == pytest.approx(50.0)  # clip.yaml
    siglip = _clip(loss="siglip")
    assert siglip.logit_scale().item() == pytest.approx(10.0)
    assert siglip.logit_bias.item() == -10.0
    fixed = _clip(learn_temperature=False)
    assert "log_logit_scale" not in dict(fixed.named_parameters())

    model = _clip(optimizer=lambda groups: torch.optim.SGD(groups, lr=0.1))
    with torch.no_grad():
        model.log_logit_scale.fill_(math.log(1000.0))
    assert model.logit_scale().item() == pytest.approx(100.0)  # clamped in the forward pass
    assert model.logit_scale().dtype == torch.float32
    _trainer(max_steps=1, limit_val_batches=0).fit(model, _data())
    assert model.log_logit_scale.item() <= math.log(100.0) + 1e-6  # and the parameter itself


def test_the_clamp_matches_a_loss_at_scale_100():
    batch = _batch()
    clamped = _clip()
    with torch.no_grad():
        clamped.log_logit_scale.fill_(math.log(1e4))
    at_100 = _clip()
    with torch.no_grad():
        at_100.log_logit_scale.fill_(math.log(100.0))
    torch.testing.assert_close(_loss(clamped.eval(), batch), _loss(at_100.eval(), batch))


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="'clip' or 'siglip'"):
        _clip(loss="infonce")
    with pytest.raises(ValueError, match="init_temperature"):
        _clip(init_temperature=0.001)
    with pytest.raises(ValueError, match="num_features"):
        _clip(text_projection=False, embed_dim=32)  # the text tower gives 16


def test_captions_are_tokenized_by_the_loader_with_the_methods_tokenizer():
    model, data = _clip(), _data()
    _trainer(max_steps=1, limit_val_batches=0).fit(model, data)
    assert data.tokenizer is model.tokenizer
    batch = next(iter(data.train_dataloader()))
    torch.testing.assert_close(batch["tokens"], model.tokenizer(batch["caption"]))
    # A loader without the tokenizer still works: encode_text tokenizes.
    torch.testing.assert_close(
        model.encode_text(batch["caption"]), model.encode_text(batch["caption"], batch["tokens"])
    )


def test_a_frozen_text_tower_embeds_each_caption_once():
    model = _clip(freeze_text_tower=True, text_cache_size=5)
    calls = []
    model.text_tower.register_forward_hook(lambda m, args, out: calls.append(len(out)))
    first = model.encode_text(["a", "b", "c", "a"])
    second = model.encode_text(["c", "b", "d", "e", "f", "g"])
    assert calls == [3, 4]  # "a" once; the second call computed only d, e, f, g
    assert len(model._text_cache) == 5  # bounded: f and g did not fit
    uncached = _clip(freeze_text_tower=True, text_cache_size=0)
    torch.testing.assert_close(first, uncached.encode_text(["a", "b", "c", "a"]))
    torch.testing.assert_close(second[:2], first[[2, 1]])


def test_lit_trains_an_image_tower_into_a_frozen_pretrained_text_space():
    text = SentenceTransformerText("sentence-transformers/all-MiniLM-L6-v2")
    model = CLIP(
        text_tower=text,
        embed_dim=None,
        text_projection=False,
        freeze_text_tower=True,
        backbone_kwargs={"width": 4},
    )
    before = {k: v.clone() for k, v in model.text_tower.state_dict().items()}
    _trainer(max_steps=2, limit_val_batches=0).fit(model, _data())
    assert model.image_projection.out_features == 384
    for key, value in model.text_tower.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_frozen_towers_fit_without_the_eval_mode_warning_and_any_other_module_warns():
    def fit(model: CLIP) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            before = list(warnings.filters)
            _trainer(max_steps=1, limit_val_batches=0).fit(model, _data())
            assert warnings.filters == before  # the filter lasted until Lightning's check only
        return [str(w.message) for w in caught if "in eval mode" in str(w.message)]

    assert fit(_clip(freeze_text_tower=True)) == []  # the frozen tower: by design

    class Stray(CLIP):  # a module in eval mode that no freezing explains
        def on_fit_start(self) -> None:
            self.image_projection.eval()
            super().on_fit_start()

    assert len(fit(Stray(text_tower=_text(), embed_dim=16, backbone_kwargs={"width": 4}))) == 1
    assert len(fit(_clip())) == 0  # nothing frozen, nothing in eval mode


def test_encode_image_is_the_projected_backbone_feature_of_uint8_images():
    model = _clip().eval()
    images = _batch()["image"]
    features = model.backbone(model.augment.normalize(images))
    torch.testing.assert_close(model.embed(images), features)  # the representation
    torch.testing.assert_close(model.encode_image(images), model.image_projection(features))
