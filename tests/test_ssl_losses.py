"""The self-supervised losses (moco, barlow_twins, vicreg, simsiam, dino, swav, pairs) against
slow loops written from the papers' equations and pseudocode: values and gradients, in float64.
Under DDP (statistics summed over ranks) they are tested through the methods in
test_every_method.py."""

import math

import pytest
import torch

from contrastive.losses import (
    barlow_twins_loss,
    cross_view_pairs,
    dino_loss,
    moco_loss,
    negative_cosine,
    sinkhorn_knopp,
    swav_loss,
    vicreg_loss,
)
from contrastive.queue import EmbeddingQueue


def _leaf(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()


def _cos(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u @ v) / (u.norm() * v.norm())


def _check(loss, reference, inputs) -> None:
    """Equal values and equal gradients with respect to every input."""
    torch.testing.assert_close(loss, reference)
    grads = torch.autograd.grad(loss, inputs, retain_graph=True)  # inputs may share a graph
    reference_grads = torch.autograd.grad(reference, inputs)
    for g, r in zip(grads, reference_grads, strict=True):
        torch.testing.assert_close(g, r)


# ---- MoCo ---------------------------------------------------------------------------------


def moco_loop(q, k, queue, t):
    """MoCo, Algorithm 1: l_pos = q.k+, l_neg = q.queue, CE with the positive as class 0."""
    losses = []
    for i in range(len(q)):
        positive = torch.exp(_cos(q[i], k[i]) / t)
        negatives = sum(torch.exp(_cos(q[i], n) / t) for n in queue)
        losses.append(-torch.log(positive / (positive + negatives)))
    return sum(losses) / len(losses)


def test_moco_loss_matches_the_paper_loop():
    q, k, queue = _leaf(5, 4, seed=0), _leaf(5, 4, seed=1), _leaf(7, 4, seed=2)
    _check(moco_loss(q, k, queue, 0.2), moco_loop(q, k, queue, 0.2), (q, k, queue))


def test_moco_loss_without_negatives_is_zero_and_shapes_are_checked():
    q = _leaf(3, 4, seed=0)
    assert moco_loss(q, q, q[:0], 0.2).item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="queue"):
        moco_loss(q, q, torch.zeros(2, 5), 0.2)
    with pytest.raises(ValueError, match="temperature"):
        moco_loss(q, q, q, 0.0)


# ---- Barlow Twins -------------------------------------------------------------------------


def barlow_twins_loop(z1, z2, lam, eps=1e-5):
    """Barlow Twins, eq. 1 with Algorithm 1's batch normalisation, entry by entry."""
    n, d = z1.shape

    def normalise(z):
        columns = []
        for j in range(d):
            mean = sum(z[b, j] for b in range(n)) / n
            var = sum((z[b, j] - mean) ** 2 for b in range(n)) / n
            columns.append((z[:, j] - mean) / torch.sqrt(var + eps))
        return torch.stack(columns, dim=1)

    a, b = normalise(z1), normalise(z2)
    loss = 0
    for i in range(d):
        for j in range(d):
            c = sum(a[s, i] * b[s, j] for s in range(n)) / n
            loss = loss + ((1 - c) ** 2 if i == j else lam * c**2)
    return loss


def test_barlow_twins_matches_the_paper_loop():
    z1, z2 = _leaf(6, 4, seed=0), _leaf(6, 4, seed=1)
    _check(barlow_twins_loss(z1, z2, 5e-3), barlow_twins_loop(z1, z2, 5e-3), (z1, z2))


def test_barlow_twins_is_zero_for_identical_decorrelated_views():
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    assert barlow_twins_loss(z, z, 5e-3, eps=0.0).item() == pytest.approx(0.0, abs=1e-12)


# ---- VICReg --------------------------------------------------------------------------------


def vicreg_loop(z1, z2, lam, mu, nu, eps=1e-4):
    """VICReg, eq. 1-6: invariance s, variance v (unbiased), covariance c, entry by entry."""
    n, d = z1.shape
    s = sum(((z1[b] - z2[b]) ** 2).sum() for b in range(n)) / (n * d)

    def v(z):
        hinge = 0
        for j in range(d):
            mean = sum(z[b, j] for b in range(n)) / n
            var = sum((z[b, j] - mean) ** 2 for b in range(n)) / (n - 1)
            hinge = hinge + torch.clamp(1 - torch.sqrt(var + eps), min=0)
        return hinge / d

    def c(z):
        mean = [sum(z[b, j] for b in range(n)) / n for j in range(d)]
        total = 0
        for i in range(d):
            for j in range(d):
                if i != j:
                    cov = sum((z[b, i] - mean[i]) * (z[b, j] - mean[j]) for b in range(n))
                    total = total + (cov / (n - 1)) ** 2
        return total / d

    return lam * s + mu * (v(z1) + v(z2)) / 2 + nu * (c(z1) + c(z2))


def test_vicreg_matches_the_paper_loop():
    # Scaled by 0.5: some features below unit variance, so the hinge is active for them.
    z1, z2 = _leaf(7, 4, seed=0), _leaf(7, 4, seed=1)
    a, b = z1 * torch.tensor([0.5, 1.0, 2.0, 0.3], dtype=torch.float64), z2 * 0.5
    _check(vicreg_loss(a, b, 25, 25, 1), vicreg_loop(a, b, 25, 25, 1), (z1, z2))


def test_vicreg_needs_two_rows():
    with pytest.raises(ValueError, match="N >= 2"):
        vicreg_loss(torch.zeros(1, 3), torch.zeros(1, 3))


# ---- SimSiam -------------------------------------------------------------------------------


def test_negative_cosine_matches_the_paper():
    p, z = _leaf(5, 3, seed=0), _leaf(5, 3, seed=1)
    reference = sum(-_cos(p[i], z[i]) for i in range(5)) / 5
    _check(negative_cosine(p, z), reference, (p, z))


# ---- DINO ----------------------------------------------------------------------------------


def dino_loop(student, teacher, center, ts, tt):
    """DINO, Algorithm 1: H(t, s) = -sum p_t log p_s for every (teacher global view, other
    student view) pair, averaged over pairs and rows."""
    n, v_count, k = student.shape
    terms = []
    for g in range(teacher.shape[1]):
        for v in range(v_count):
            if v == g:
                continue
            per_row = []
            for b in range(n):
                t = torch.exp((teacher[b, g] - center) / tt)
                t = t / t.sum()
                log_s = student[b, v] / ts - torch.log(torch.exp(student[b, v] / ts).sum())
                per_row.append(-(t * log_s).sum())
            terms.append(sum(per_row) / n)
    return sum(terms) / len(terms)


@pytest.mark.parametrize("views", [2, 4])  # 2 global views, or 2 global + 2 local
def test_dino_loss_matches_the_paper_loop(views):
    student, teacher = _leaf(3, views, 6, seed=0), _leaf(3, 2, 6, seed=1)
    center = torch.randn(6, dtype=torch.float64)
    loss = dino_loss(student, teacher, center, 0.1, 0.04)
    _check(loss, dino_loop(student, teacher, center, 0.1, 0.04), (student, teacher))


# ---- SwAV ----------------------------------------------------------------------------------


def sinkhorn_loop(scores, epsilon, iterations):
    """SwAV eq. 3 solved as the paper's appendix: Q = exp(C^T Z / eps), scaled so the
    prototypes (rows) and samples (columns) get equal mass in turn; returned as B * Q^T."""
    b, k = scores.shape
    q = [[math.exp(scores[i, j].item() / epsilon) for i in range(b)] for j in range(k)]  # (K, B)
    total = sum(sum(row) for row in q)
    q = [[x / total for x in row] for row in q]
    for _ in range(iterations):
        q = [[x / sum(row) / k for x in row] for row in q]  # each prototype: mass 1 / K
        column = [sum(q[j][i] for j in range(k)) for i in range(b)]
        q = [[q[j][i] / column[i] / b for i in range(b)] for j in range(k)]  # each sample: 1 / B
    return torch.tensor([[q[j][i] * b for j in range(k)] for i in range(b)], dtype=torch.float64)


def test_sinkhorn_matches_the_paper_loop_and_equipartitions():
    scores = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scores = torch.nn.functional.normalize(scores, dim=1)  # cosines, as SwAV's scores
    codes = sinkhorn_knopp(scores, epsilon=0.05, iterations=3)
    assert codes.dtype == torch.float64  # float32 at least, float64 kept
    torch.testing.assert_close(codes, sinkhorn_loop(scores, 0.05, 3))
    torch.testing.assert_close(codes.float().sum(dim=1), torch.ones(6))  # each code sums to 1
    balanced = sinkhorn_knopp(scores, epsilon=0.05, iterations=200).float()
    torch.testing.assert_close(balanced.sum(dim=0), torch.full((4,), 6 / 4), rtol=1e-3, atol=0)


def swav_loop(scores, codes, t):
    """SwAV eq. 1-2: every view predicts each global view's codes but its own."""
    n, v_count, _ = scores.shape
    terms = []
    for g in range(codes.shape[1]):
        for v in range(v_count):
            if v != g:
                rows = [
                    -(codes[b, g] * torch.log_softmax(scores[b, v] / t, dim=0)).sum()
                    for b in range(n)
                ]
                terms.append(sum(rows) / n)
    return sum(terms) / len(terms)


@pytest.mark.parametrize("views", [2, 5])
def test_swav_loss_matches_the_paper_loop(views):
    scores = _leaf(4, views, 6, seed=0)
    codes = torch.softmax(torch.randn(4, 2, 6, dtype=torch.float64), dim=-1)
    _check(swav_loss(scores, codes, 0.1), swav_loop(scores, codes, 0.1), (scores,))


# ---- which views are compared --------------------------------------------------------------


def test_cross_view_pairs_compare_every_view_with_each_other_global_view():
    assert cross_view_pairs(2) == [(1, 0), (0, 1)]
    assert cross_view_pairs(2, symmetric=True) == [(1, 0)]
    assert cross_view_pairs(4) == [(1, 0), (2, 0), (3, 0), (0, 1), (2, 1), (3, 1)]
    assert cross_view_pairs(4, symmetric=True) == [(1, 0), (2, 0), (3, 0), (2, 1), (3, 1)]
    with pytest.raises(ValueError, match="2 or more views"):
        cross_view_pairs(1)


# ---- NNCLR's support set -------------------------------------------------------------------


def test_the_nearest_queued_embedding_is_found_by_cosine():
    queue = EmbeddingQueue(4, 2)
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(queue.nearest(rows), rows)  # empty: each row is its own
    support = torch.tensor([[10.0, 1.0], [0.0, 2.0], [-1.0, 0.0], [1.0, 1.0]])
    queue.push(support)
    queries = torch.tensor([[3.0, 0.1], [0.1, 3.0], [-5.0, 0.2], [2.0, 2.1]], requires_grad=True)
    nearest = queue.nearest(queries)
    torch.testing.assert_close(nearest, support)  # by angle, not by distance
    assert not nearest.requires_grad  # the support set is out of the graph
