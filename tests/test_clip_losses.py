"""CLIP's and SigLIP's losses against loops written from the papers, and the dense forms."""

import math

import pytest
import torch
import torch.nn.functional as F

from contrastive.losses import clip_loss, siglip_loss


def _cos(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u @ v) / (u.norm() * v.norm())


def clip_loop(images, texts, scale):
    """CLIP (Radford et al. 2021), Figure 3: cross-entropy over image rows and over text rows
    of ``scale * cos``, averaged."""
    n = len(images)

    def ce(queries, keys, i):
        logits = [scale * _cos(queries[i], keys[j]) for j in range(n)]
        return -(logits[i] - torch.log(sum(torch.exp(x) for x in logits)))

    loss_i = sum(ce(images, texts, i) for i in range(n)) / n
    loss_t = sum(ce(texts, images, i) for i in range(n)) / n
    return (loss_i + loss_t) / 2


def siglip_loop(images, texts, scale, bias):
    """SigLIP (Zhai et al. 2023), Algorithm 1: every pair a binary problem, summed, over N."""
    n = len(images)
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total = total - F.logsigmoid(z * (scale * _cos(images[i], texts[j]) + bias))
    return total / n


def _leaf(*shape, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()


def _grads(loss, inputs):
    return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("block_size", [None, 3])
def test_clip_loss_matches_the_paper_loop_values_and_gradients(block_size):
    images, texts = _leaf(7, 5, seed=0), _leaf(7, 5, seed=1)
    scale = torch.tensor(14.3, dtype=torch.float64, requires_grad=True)
    ref = clip_loop(images, texts, scale)
    got = clip_loss(images, texts, images, texts, torch.arange(7), scale, block_size)
    torch.testing.assert_close(got, ref)
    for g, r in zip(
        _grads(got, (images, texts, scale)), _grads(ref, (images, texts, scale)), strict=True
    ):
        torch.testing.assert_close(g, r)


def test_clip_loss_equals_the_dense_formula_in_float32_tiled_or_not():
    images, texts = (
        _leaf(50, 16, seed=2, dtype=torch.float32),
        _leaf(50, 16, seed=3, dtype=torch.float32),
    )
    logits = 20.0 * F.normalize(images, dim=1) @ F.normalize(texts, dim=1).T  # (N, N)
    target = torch.arange(50)
    dense = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    ref_grads = _grads(dense, (images, texts))
    for block_size in (None, 7):  # 7 does not divide 50
        got = clip_loss(images, texts, images, texts, target, 20.0, block_size)
        torch.testing.assert_close(got, dense, rtol=1e-5, atol=1e-6)
        for g, r in zip(_grads(got, (images, texts)), ref_grads, strict=True):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_rows_of_a_gathered_batch_take_their_share_of_the_global_loss():
    images, texts = _leaf(6, 4, seed=4), _leaf(6, 4, seed=5)
    full = clip_loss(images, texts, images, texts, torch.arange(6), 10.0)
    halves = [
        clip_loss(images[rows], texts[rows], images, texts, torch.arange(6)[rows], 10.0)
        for rows in (slice(0, 3), slice(3, 6))
    ]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, full)  # what DDP's mean gives


def test_siglip_loss_matches_the_paper_loop_values_and_gradients():
    images, texts = _leaf(5, 4, seed=6), _leaf(5, 4, seed=7)
    scale = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-10.0, dtype=torch.float64, requires_grad=True)
    ref = siglip_loop(images, texts, scale, bias)
    got = siglip_loss(images, texts, torch.arange(5), scale, bias)
    torch.testing.assert_close(got, ref)
    inputs = (images, texts, scale, bias)
    for g, r in zip(_grads(got, inputs), _grads(ref, inputs), strict=True):
        torch.testing.assert_close(g, r)
    # Rows of a gathered batch: summed pairs over the local rows, / local rows.
    top = siglip_loss(images[:2], texts, torch.arange(2), scale, bias)
    bottom = siglip_loss(images[2:], texts, torch.arange(2, 5), scale, bias)
    torch.testing.assert_close((2 * top + 3 * bottom) / 5, got)


def test_logits_and_scale_are_float32_under_bf16_autocast():
    images, texts = torch.randn(8, 16), torch.randn(8, 16)
    want = clip_loss(
        images.bfloat16().float(),
        texts.bfloat16().float(),
        images.bfloat16().float(),
        texts.bfloat16().float(),
        torch.arange(8),
        50.0,
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf_images, bf_texts = images.bfloat16(), texts.bfloat16()
        got = clip_loss(bf_images, bf_texts, bf_images, bf_texts, torch.arange(8), 50.0)
        sig = siglip_loss(bf_images, bf_texts, torch.arange(8), 10.0, -10.0)
    assert got.dtype == torch.float32 and sig.dtype == torch.float32
    torch.testing.assert_close(got, want)  # no bf16 rounding of the logits themselves


def test_clip_loss_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(3, 4\), \(2, 4\)"):
        clip_loss(
            torch.randn(3, 4),
            torch.randn(2, 4),
            torch.randn(3, 4),
            torch.randn(3, 4),
            torch.arange(3),
            1.0,
        )
    with pytest.raises(ValueError, match="expected"):
        siglip_loss(torch.randn(3, 4), torch.randn(3, 5), torch.arange(3), 1.0, 0.0)
    assert math.isfinite(clip_loss(*(torch.randn(2, 3),) * 4, torch.arange(2), 100.0).item())
