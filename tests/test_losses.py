import math

import pytest
import torch

from contrastive.losses import info_nce


def _cos(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u @ v) / (u.norm() * v.norm())


def nt_xent_loop(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR (Chen et al. 2020), Algorithm 1, written as the paper does: 2N views, one
    positive each, the denominator over every other view."""
    n = len(z1)
    z = [None] * (2 * n)
    for k in range(n):
        z[2 * k], z[2 * k + 1] = z1[k], z2[k]

    def ell(i: int, j: int) -> torch.Tensor:
        denominator = sum(torch.exp(_cos(z[i], z[k]) / temperature) for k in range(2 * n) if k != i)
        return -torch.log(torch.exp(_cos(z[i], z[j]) / temperature) / denominator)

    return sum(ell(2 * k, 2 * k + 1) + ell(2 * k + 1, 2 * k) for k in range(n)) / (2 * n)


def supcon_out_loop(z: torch.Tensor, labels: list[int], temperature: float) -> torch.Tensor:
    """SupCon L_out (Khosla et al. 2020, eq. 2): mean over positives outside the log, over the
    anchors that have a positive."""
    losses = []
    for i in range(len(z)):
        positives = [p for p in range(len(z)) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(
            torch.exp(_cos(z[i], z[a]) / temperature) for a in range(len(z)) if a != i
        )
        losses.append(
            -sum(
                torch.log(torch.exp(_cos(z[i], z[p]) / temperature) / denominator)
                for p in positives
            )
            / len(positives)
        )
    return sum(losses) / len(losses)


def _leaf(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_nt_xent_matches_paper_loop_values_and_gradients(temperature):
    z1, z2 = _leaf(6, 5, seed=0), _leaf(6, 5, seed=1)
    ref = nt_xent_loop(z1, z2, temperature)
    ref_grads = torch.autograd.grad(ref, (z1, z2))

    z = torch.cat([z1, z2])  # (2N, D): views, image ids repeat
    ids = torch.arange(6).repeat(2)
    loss = info_nce(z, z, ids, ids, temperature, anchor_positions=torch.arange(12))
    grads = torch.autograd.grad(loss, (z1, z2))

    torch.testing.assert_close(loss, ref)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r)


def test_several_positives_match_supcon_loop_including_anchors_without_positives():
    z = _leaf(10, 4, seed=2)
    labels = [0, 0, 0, 1, 1, 2, 3, 3, 3, 3]  # class 2 has a single member: no positive
    ref = supcon_out_loop(z, labels, 0.1)
    ref_grad = torch.autograd.grad(ref, z)[0]
    lab = torch.tensor(labels)
    loss = info_nce(z, z, lab, lab, 0.1, anchor_positions=torch.arange(10))
    grad = torch.autograd.grad(loss, z)[0]
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(grad, ref_grad)
    assert grad[5].abs().sum() > 0  # a lone anchor still serves as a negative for the others


def test_anchors_among_gathered_candidates_equal_the_full_loss_restricted_to_them():
    # A rank's anchors are rows 4:8 of the candidates; the mean of the two halves is the whole.
    z = _leaf(8, 3, seed=3)
    ids = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    full = info_nce(z, z, ids, ids, 0.2, torch.arange(8))
    halves = [
        info_nce(z[s], z, ids[s], ids, 0.2, torch.arange(8)[s]) for s in (slice(0, 4), slice(4, 8))
    ]
    torch.testing.assert_close(full, sum(halves) / 2)


def test_gradcheck_and_learnable_temperature():
    z = _leaf(6, 3, seed=4)
    ids = torch.tensor([0, 1, 2, 0, 1, 2])
    t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda z, t: info_nce(z, z, ids, ids, t, torch.arange(6)), (z, t)
    )


def test_stable_at_tiny_temperature_and_no_nan_without_positives():
    z = _leaf(8, 4, seed=5).detach().float().mul(100).requires_grad_()
    ids = torch.arange(8)  # every anchor alone: nothing to average
    loss = info_nce(z, z, ids, ids, 1e-4, torch.arange(8))
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(z.grad).all()
    ids = torch.arange(4).repeat(2)
    loss = info_nce(z, z, ids, ids, 1e-4, torch.arange(8))
    assert torch.isfinite(loss) and loss.item() > 0


def test_float32_under_bf16_autocast():
    z = torch.randn(8, 4)
    ids = torch.arange(4).repeat(2)
    expected = info_nce(z, z, ids, ids, 0.1, torch.arange(8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = info_nce(z.bfloat16(), z.bfloat16(), ids, ids, 0.1, torch.arange(8))
    assert loss.dtype == torch.float32
    assert math.isclose(loss.item(), expected.item(), rel_tol=2e-2)


def test_errors_say_what_was_expected():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="expected labels"):
        info_nce(z, z, torch.arange(3), torch.arange(4))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        info_nce(z, z, torch.arange(4), torch.arange(4), temperature=0.0)
    with pytest.raises(ValueError, match=r"candidates \(M, D\)"):
        info_nce(z, torch.randn(4, 2), torch.arange(4), torch.arange(4))
