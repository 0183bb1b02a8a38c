"""Fine-tuning a pretrained open_clip model keeps what it knows: CLIP on ``open_clip:NAME`` with
the same model's pretrained text tower reuses its projections and logit scale, so at step 0 it
embeds, scores and classifies zero-shot exactly as open_clip does."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY
from lightning.pytorch import Trainer

import contrastive
from contrastive.datamodules import ShapesDataModule
from contrastive.evaluation import CrossModalEvaluation
from contrastive.methods import CLIP
from contrastive.text import OpenCLIPText

SCALE = 30.0  # the "pretrained" model's learnt logit scale (CLIP's init is 1 / 0.07 = 14.3)


@pytest.fixture(scope="module")
def pretrained(tiny_checkpoint, tmp_path_factory):
    """The tiny open_clip model with a learnt logit scale, saved to a local file (the stand-in
    for a pretrained tag), and open_clip's own model loaded from it."""
    model, _ = tiny_checkpoint
    state = dict(model.state_dict(), logit_scale=torch.tensor(math.log(SCALE)))
    path = str(tmp_path_factory.mktemp("pretrained") / "tiny_pretrained.pt")
    torch.save(state, path)
    return open_clip.create_model(TINY, pretrained=path).eval(), path


def _clip(path: str, text_pretrained: str | None = "same", **kwargs) -> CLIP:
    text_weights = path if text_pretrained == "same" else text_pretrained
    args = dict(embed_dim=None, backbone_kwargs={"pretrained": path})
    return CLIP(
        backbone=f"open_clip:{TINY}",
        text_tower=OpenCLIPText(TINY, pretrained=text_weights),
        **{**args, **kwargs},
    ).eval()


def _images(n: int = 6) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=generator, dtype=torch.uint8)


def _open_clip_views(reference, images: torch.Tensor) -> torch.Tensor:
    config = reference.visual.preprocess_cfg  # open_clip's own normalisation
    mean, std = (torch.tensor(config[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    return (images.float() / 255 - mean) / std


TEXTS = ["a red circle", "a small blue star", "a green square on a white background"]


def test_the_towers_and_the_scale_are_open_clips_at_step_0(pretrained):
    reference, path = pretrained
    model = _clip(path)
    assert isinstance(model.image_projection, torch.nn.Identity)
    assert isinstance(model.text_projection, torch.nn.Identity)
    images = _images()
    views = model.augment.normalize(images)
    torch.testing.assert_close(views, _open_clip_views(reference, images))
    with torch.inference_mode():
        torch.testing.assert_close(model.encode_image(images), reference.encode_image(views))
        tokens = open_clip.get_tokenizer(TINY)(TEXTS)
        ours = model.encode_text(TEXTS)
        torch.testing.assert_close(ours, reference.encode_text(tokens))
        torch.testing.assert_close(model.logit_scale(), reference.logit_scale.exp())
    assert model.logit_scale().item() == pytest.approx(SCALE)


def test_zero_shot_accuracy_at_step_0_equals_open_clips_on_the_same_images(pretrained):
    reference, path = pretrained
    model = _clip(path)
    data = ShapesDataModule(image_size=32, num_val=64, num_bank=32, eval_batch_size=32)
    trainer = Trainer(
        logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[CrossModalEvaluation()],
    )  # fmt: skip
    trainer.validate(model, data)
    # open_clip's zero-shot classifier on the validation queries: the evaluation's default
    # prompt ("a photo of a {}."), unit text and image embeddings, the arg max.
    tokenizer = open_clip.get_tokenizer(TINY)
    queries = data.val_dataloader()[1]
    checked = 0
    for attr, names in data.class_names.items():
        with torch.inference_mode():
            prompts = tokenizer([f"a photo of a {name}." for name in names])
            classes = F.normalize(reference.encode_text(prompts), dim=-1)  # (C, E)
            right = total = 0
            for batch in queries:
                views = _open_clip_views(reference, batch["image"])
                features = F.normalize(reference.encode_image(views), dim=-1)  # (B, E)
                right += (features @ classes.T).argmax(1).eq(batch["labels"][attr]).sum().item()
                total += len(views)
        ours = trainer.callback_metrics[f"val/zero_shot/{attr}"].item()
        assert ours == pytest.approx(right / total, abs=1e-6), attr
        checked += 1
    assert checked == len(data.class_names) >= 5


def test_other_text_weights_get_new_projections_and_the_initial_scale(pretrained):
    _, path = pretrained
    model = _clip(path, text_pretrained=None, embed_dim=16)  # a random text tower
    assert isinstance(model.image_projection, torch.nn.Linear)
    assert isinstance(model.text_projection, torch.nn.Linear)
    assert model.logit_scale().item() == pytest.approx(1 / 0.07)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"embed_dim": 16}, "embed_dim 16 would replace them with random ones: set embed_dim"),
        ({"init_temperature": 0.05}, "learnt logit scale is kept; leave init_temperature unset"),
    ],
)
def test_what_would_replace_the_pretrained_space_is_refused(pretrained, kwargs, message):
    _, path = pretrained
    with pytest.raises(ValueError, match=message):
        _clip(path, **kwargs)


def test_a_fine_tuned_pair_loads_back_through_the_safe_loader(pretrained, tmp_path):
    _, path = pretrained
    model = _clip(path)
    trainer = Trainer(
        max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, ShapesDataModule(image_size=32, num_train=32, batch_size=16))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = contrastive.load(tmp_path / "m.ckpt")
    assert isinstance(loaded.image_projection, torch.nn.Identity)
    images = _images()
    with torch.inference_mode():
        torch.testing.assert_close(loaded.embed(images), model.eval().embed(images))
        torch.testing.assert_close(loaded.logit_scale(), model.logit_scale())
