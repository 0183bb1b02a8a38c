import pytest
import torch

from contrastive.backbones import create_backbone
from contrastive.conditioning import create_conditioning, list_conditionings

HEADS = ["project", "film", "combiner"]


def test_every_mechanism_is_registered():
    assert list_conditionings() == ["combiner", "film", "project", "token"]
    with pytest.raises(ValueError, match="unknown conditioning 'projet'.*did you mean"):
        create_conditioning("projet", 8, 8)


@pytest.mark.parametrize("name", HEADS)
def test_pairwise_is_every_image_under_every_text(name):
    torch.manual_seed(0)
    head = create_conditioning(name, image_dim=12, text_dim=10, out_dim=6, hidden_dim=16)
    features, text = torch.randn(5, 12), torch.randn(3, 10)
    pairwise = head.pairwise(features, text)  # (3, 5, 6)
    assert pairwise.shape == (3, 5, 6)
    for i in range(3):
        row = head(features, text[i].expand(5, -1))  # every image under text i, row by row
        torch.testing.assert_close(pairwise[i], row, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", HEADS)
def test_the_text_changes_the_embedding_and_gradients_reach_every_part(name):
    torch.manual_seed(0)
    head = create_conditioning(name, image_dim=12, text_dim=10, out_dim=6, hidden_dim=16)
    # FiLM starts as the unconditioned head (zero scale and shift): move it off zero first.
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.3)
    features = torch.randn(4, 12)
    a, b = head(features, torch.randn(1, 10).expand(4, -1)), head(features, torch.randn(4, 10))
    assert not torch.allclose(a, b)
    head.pairwise(features, torch.randn(3, 10)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_project_masks_a_learnt_embedding():
    head = create_conditioning("project", 12, 10, out_dim=6, hidden_dim=16)
    features, text = torch.randn(4, 12), torch.randn(4, 10)
    (mask,) = head.text_params(text)
    assert ((mask > 0) & (mask < 1)).all()
    torch.testing.assert_close(head(features, text), mask * head.coordinates(head.trunk(features)))


@pytest.mark.parametrize("name", HEADS)
def test_the_trunk_is_centred_over_the_images_so_no_text_can_select_a_constant(name):
    head = create_conditioning(name, 12, 10, out_dim=6, hidden_dim=16).train()
    trunk = head.trunk(torch.randn(32, 12) + 5.0)
    torch.testing.assert_close(trunk.mean(0), torch.zeros(16), atol=1e-5, rtol=0)


def test_film_starts_as_the_unconditioned_head():
    head = create_conditioning("film", 12, 10, out_dim=6, hidden_dim=16)
    features = torch.randn(4, 12)
    torch.testing.assert_close(
        head(features, torch.randn(4, 10)), head(features, torch.randn(4, 10))
    )


def vit():
    torch.manual_seed(0)
    return create_backbone(
        "timm:vit_tiny_patch16_224", img_size=16, patch_size=8, depth=2, embed_dim=32, num_heads=2
    )


def test_token_conditioning_feeds_the_text_as_a_token_through_a_frozen_vit():
    tower = vit().requires_grad_(False).eval()
    head = create_conditioning("token", tower.num_features, 10, out_dim=6).attach(tower)
    images, text = torch.randn(3, 3, 16, 16), torch.randn(3, 10)
    out = head(images, text)
    assert out.shape == (3, 6)
    # The token goes through attention: another text gives another embedding of the same image.
    assert not torch.allclose(out, head(images, torch.randn(3, 10)))
    out.square().sum().backward()
    assert all(p.grad is None for p in tower.parameters())  # the tower stays frozen
    assert all(p.grad is not None for p in head.parameters())
    assert not any(n.startswith("_tower") for n, _ in head.named_parameters())  # not saved twice
    pairwise = head.pairwise(images, text[:2])  # (2, 3, 6)
    torch.testing.assert_close(pairwise[1], head(images, text[1].expand(3, -1)))


def test_token_conditioning_without_the_text_token_is_the_vit():
    # Sanity check of the re-implemented forward: with the extra token removed it is timm's.
    tower = vit().eval()
    images = torch.randn(2, 3, 16, 16)
    x = tower.norm(tower.blocks(tower.norm_pre(tower._pos_embed(tower.patch_embed(images)))))
    torch.testing.assert_close(x[:, 0], tower(images))


def test_token_conditioning_needs_a_vit():
    head = create_conditioning("token", 16, 10, out_dim=6)
    with pytest.raises(ValueError, match="needs a timm VisionTransformer"):
        head.attach(create_backbone("small_cnn", width=4))
    with pytest.raises(RuntimeError, match="attach"):
        head(torch.randn(1, 3, 16, 16), torch.randn(1, 10))


def test_sizes_are_checked():
    with pytest.raises(ValueError, match="must be >= 1"):
        create_conditioning("film", 12, 0)
