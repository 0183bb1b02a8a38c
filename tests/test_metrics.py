"""Tests for contrastive.metrics: each functional form against a slow loop from the paper's formula,
each Metric against its functional form over batches, and the Metrics under 2-process gloo DDP."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from contrastive.metrics import (
    Alignment,
    EffectiveRank,
    EmbeddingStd,
    KNNAccuracy,
    Uniformity,
    alignment,
    effective_rank,
    embedding_std,
    knn_accuracy,
    knn_predict,
    uniformity,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


# ---------------------------------------------------------------------------------------------
# Slow references, written from the papers' formulas with Python loops.
# ---------------------------------------------------------------------------------------------


def _ref_alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float) -> float:
    total = 0.0
    for a, b in zip(z1.tolist(), z2.tolist(), strict=True):
        a, b = _unit(a), _unit(b)
        total += math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True))) ** alpha
    return total / z1.shape[0]


def _ref_uniformity(z: torch.Tensor, t: float) -> float:
    rows = [_unit(r) for r in z.tolist()]
    total, pairs = 0.0, 0
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            sq = sum((x - y) ** 2 for x, y in zip(rows[i], rows[j], strict=True))
            total += math.exp(-t * sq)
            pairs += 1
    return math.log(total / pairs)


def _ref_erank_from_singular_values(s: list[float]) -> float:
    total = sum(s)
    entropy = 0.0
    for value in s:
        p = value / total + 1e-7
        entropy -= p * math.log(p)
    return math.exp(entropy)


def _ref_knn_predict(query, bank, bank_labels, num_classes, k, temperature) -> list[int]:
    bank_rows = [_unit(r) for r in bank.tolist()]
    preds = []
    for q in query.tolist():
        q = _unit(q)
        sims = [sum(x * y for x, y in zip(q, b, strict=True)) for b in bank_rows]
        order = sorted(range(len(sims)), key=lambda j: -sims[j])[: min(k, len(sims))]
        scores = [0.0] * num_classes
        for j in order:
            scores[int(bank_labels[j])] += math.exp(sims[j] / temperature)
        preds.append(max(range(num_classes), key=lambda c: (scores[c], -c)))
    return preds


# ---------------------------------------------------------------------------------------------
# Functional forms
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.0])
def test_alignment_matches_reference(alpha: float) -> None:
    g = _gen(1)
    z1 = torch.randn(9, 5, generator=g) * 3
    z2 = z1 + 0.5 * torch.randn(9, 5, generator=g)
    got = alignment(z1, z2, alpha)
    assert got.shape == () and got.dtype == torch.float32
    assert got.item() == pytest.approx(_ref_alignment(z1, z2, alpha), rel=1e-5)


def test_alignment_is_scale_invariant_and_differentiable() -> None:
    g = _gen(2)
    z1 = torch.randn(6, 4, generator=g, requires_grad=True)
    z2 = torch.randn(6, 4, generator=g)
    torch.testing.assert_close(alignment(z1, z2), alignment(5 * z1.detach(), 0.1 * z2))
    alignment(z1, z2).backward()
    assert z1.grad is not None and torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0


@pytest.mark.parametrize("t", [0.5, 2.0, 10.0])
def test_uniformity_matches_reference(t: float) -> None:
    z = torch.randn(11, 4, generator=_gen(3)) * 2
    got = uniformity(z, t)
    assert got.shape == () and got.dtype == torch.float32
    assert got.item() == pytest.approx(_ref_uniformity(z, t), rel=1e-5, abs=1e-6)


def test_uniformity_stays_finite_for_large_t() -> None:
    # exp(-t * d^2) underflows float32 for every pair here; the logsumexp form must not give -inf.
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    t = 100.0
    assert torch.isfinite(uniformity(z, t))
    assert uniformity(z, t).item() == pytest.approx(_ref_uniformity(z, t), rel=1e-5)


def test_effective_rank_matches_formula_on_known_singular_values() -> None:
    g = _gen(4)
    u, _ = torch.linalg.qr(torch.randn(40, 6, generator=g, dtype=torch.float64))  # (40, 6)
    v, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))  # (6, 6)
    s = [5.0, 3.0, 2.0, 1.0, 0.5, 0.1]
    z = (u @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ v.T).float()  # (40, 6)
    assert effective_rank(z).item() == pytest.approx(_ref_erank_from_singular_values(s), rel=1e-4)


def test_effective_rank_extremes() -> None:
    g = _gen(5)
    rank_one = torch.randn(200, 1, generator=g) @ torch.randn(1, 16, generator=g)  # (200, 16)
    assert effective_rank(rank_one).item() == pytest.approx(1.0, abs=1e-3)
    isotropic = torch.randn(20000, 16, generator=g)
    assert effective_rank(isotropic).item() == pytest.approx(16.0, rel=0.01)
    # Collapse to a 4-dimensional subspace with equal spread gives ~4.
    basis, _ = torch.linalg.qr(torch.randn(16, 4, generator=g))  # (16, 4)
    sub = torch.randn(20000, 4, generator=g) @ basis.T  # (20000, 16)
    assert effective_rank(sub).item() == pytest.approx(4.0, rel=0.01)


def test_knn_predict_matches_reference() -> None:
    g = _gen(6)
    bank = torch.randn(30, 5, generator=g)
    bank_labels = torch.randint(0, 4, (30,), generator=g)
    query = torch.randn(12, 5, generator=g)
    for k, temperature in [(1, 0.07), (5, 0.07), (7, 0.5), (30, 1.0)]:
        got = knn_predict(query, bank, bank_labels, 4, k=k, temperature=temperature)
        assert got.dtype == torch.long and got.shape == (12,)
        ref = _ref_knn_predict(query, bank, bank_labels, 4, k, temperature)
        assert got.tolist() == ref, (k, temperature)


def test_knn_vote_is_weighted_by_similarity() -> None:
    # One bank point of class 0 is close to the query, two of class 1 are farther away.
    # A sharp vote follows the close neighbour, a flat vote the majority.
    bank = torch.tensor([[1.0, 0.05], [1.0, 0.6], [1.0, -0.6]])
    bank_labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    assert knn_predict(query, bank, bank_labels, 2, k=3, temperature=0.01).item() == 0
    assert knn_predict(query, bank, bank_labels, 2, k=3, temperature=10.0).item() == 1


def test_knn_tiny_temperature_is_nearest_neighbour() -> None:
    # exp(sim / 1e-4) overflows even float64; the prediction must still be the 1-NN label.
    g = _gen(7)
    bank = torch.randn(50, 8, generator=g)
    bank_labels = torch.randint(0, 5, (50,), generator=g)
    query = torch.randn(20, 8, generator=g)
    got = knn_predict(query, bank, bank_labels, 5, k=10, temperature=1e-4)
    nearest = knn_predict(query, bank, bank_labels, 5, k=1)
    assert torch.equal(got, nearest)


def _clusters(n_per_class: int, num_classes: int, dim: int, seed: int):
    g = _gen(seed)
    centres = torch.randn(num_classes, dim, generator=g) * 5  # (C, D)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)  # (C * n,)
    points = centres[labels] + 0.3 * torch.randn(labels.shape[0], dim, generator=g)
    return points, labels


def test_knn_on_separated_clusters_is_perfect() -> None:
    bank, bank_labels = _clusters(20, 4, 16, seed=8)
    query, query_labels = _clusters(10, 4, 16, seed=8)
    query = query + 0.1 * torch.randn(query.shape, generator=_gen(9))
    acc = knn_accuracy(query, query_labels, bank, bank_labels, 4, k=5)
    assert acc.shape == () and acc.item() == 1.0
    # Shuffling the bank labels destroys it.
    shuffled = bank_labels[torch.randperm(bank_labels.shape[0], generator=_gen(10))]
    assert knn_accuracy(query, query_labels, bank, shuffled, 4, k=5).item() < 0.7


def test_knn_multi_attribute_equals_separate_runs() -> None:
    g = _gen(11)
    bank = torch.randn(40, 6, generator=g)
    query = torch.randn(15, 6, generator=g)
    num_classes = [3, 5, 2]
    bank_labels = torch.stack([torch.randint(0, c, (40,), generator=g) for c in num_classes], 1)
    query_labels = torch.stack([torch.randint(0, c, (15,), generator=g) for c in num_classes], 1)
    preds = knn_predict(query, bank, bank_labels, num_classes, k=7)
    assert preds.shape == (15, 3)
    acc = knn_accuracy(query, query_labels, bank, bank_labels, num_classes, k=7)
    assert acc.shape == (3,)
    for a, c in enumerate(num_classes):
        single = knn_predict(query, bank, bank_labels[:, a], c, k=7)
        assert torch.equal(preds[:, a], single)
        single_acc = knn_accuracy(query, query_labels[:, a], bank, bank_labels[:, a], c, k=7)
        assert acc[a].item() == pytest.approx(single_acc.item())


def test_knn_chunking_and_large_k() -> None:
    g = _gen(12)
    bank = torch.randn(10, 4, generator=g)
    bank_labels = torch.randint(0, 3, (10,), generator=g)
    query = torch.randn(23, 4, generator=g)
    full = knn_predict(query, bank, bank_labels, 3, k=4)
    for chunk_size in [1, 5, 22, 23, 100]:
        assert torch.equal(
            knn_predict(query, bank, bank_labels, 3, k=4, chunk_size=chunk_size), full
        )
    # k beyond the bank is clamped to the bank size.
    assert torch.equal(
        knn_predict(query, bank, bank_labels, 3, k=100),
        knn_predict(query, bank, bank_labels, 3, k=10),
    )
    assert knn_predict(query, bank, bank_labels, 3, k=100).tolist() == _ref_knn_predict(
        query, bank, bank_labels, 3, 100, 0.07
    )
    assert knn_predict(query[:0], bank, bank_labels, 3).shape == (0,)


def test_knn_rejects_bad_inputs() -> None:
    bank, labels = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    with pytest.raises(ValueError, match=r"labels of attribute 0 in \[0, 2\)"):
        knn_predict(torch.randn(2, 3), bank, labels, 2)
    with pytest.raises(ValueError, match=r"shape \(5, 2\) because `num_classes` has 2"):
        knn_predict(torch.randn(2, 3), bank, labels, [3, 3])
    with pytest.raises(ValueError, match="feature dimension"):
        knn_predict(torch.randn(2, 4), bank, labels, 3)
    with pytest.raises(ValueError, match="at least 1 rows"):
        knn_predict(torch.randn(2, 3), bank[:0], labels[:0], 3)


# ---------------------------------------------------------------------------------------------
# Metric classes against the functional forms
# ---------------------------------------------------------------------------------------------


def _batches(x: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    return list(torch.split(x, sizes))


def test_alignment_metric_over_batches_and_reset() -> None:
    g = _gen(13)
    z1, z2 = torch.randn(50, 8, generator=g), torch.randn(50, 8, generator=g)
    metric = Alignment(alpha=1.5)
    for a, b in zip(_batches(z1, [7, 20, 1, 22]), _batches(z2, [7, 20, 1, 22]), strict=True):
        metric.update(a, b)
    torch.testing.assert_close(metric.compute(), alignment(z1, z2, 1.5))
    metric.reset()
    metric.update(z1[:5], z2[:5])
    torch.testing.assert_close(metric.compute(), alignment(z1[:5], z2[:5], 1.5))


_NO_UPDATE_WARNING = "ignore:The ``compute`` method of metric:UserWarning"


@pytest.mark.filterwarnings(_NO_UPDATE_WARNING)
def test_uniformity_metric_over_batches_cap_and_reset() -> None:
    g = _gen(14)
    z = torch.randn(60, 8, generator=g)
    metric = Uniformity(t=2.0, max_samples=100)
    for batch in _batches(z, [10, 25, 25]):
        metric.update(batch)
    torch.testing.assert_close(metric.compute(), uniformity(z, 2.0))

    capped = Uniformity(t=2.0, max_samples=33)
    for batch in _batches(z, [10, 25, 25]):
        capped.update(batch)
    assert sum(e.shape[0] for e in capped.embeddings) == 33
    torch.testing.assert_close(capped.compute(), uniformity(z[:33], 2.0))

    # forward (batch value + accumulation) must respect the cap too.
    capped.reset()
    for batch in _batches(z, [10, 25, 25]):
        torch.testing.assert_close(capped(batch), uniformity(batch, 2.0))
    assert sum(e.shape[0] for e in capped.embeddings) == 33
    torch.testing.assert_close(capped.compute(), uniformity(z[:33], 2.0))

    capped.reset()
    with pytest.raises(ValueError, match="at least 2 embeddings, got 0"):
        capped.compute()


@pytest.mark.filterwarnings(_NO_UPDATE_WARNING)
def test_effective_rank_metric_over_batches_and_reset() -> None:
    g = _gen(15)
    # Anisotropic so the value is not trivially D.
    z = torch.randn(300, 12, generator=g) * torch.linspace(0.1, 3.0, 12)
    metric = EffectiveRank()
    for batch in _batches(z, [100, 1, 99, 100]):
        metric.update(batch)
    got = metric.compute()
    assert 1.0 < got.item() < 12.0
    torch.testing.assert_close(got, effective_rank(z), rtol=1e-5, atol=1e-5)

    metric.reset()
    with pytest.raises(ValueError, match="at least one update"):
        metric.compute()
    rank_one = torch.randn(50, 1, generator=g) @ torch.randn(1, 12, generator=g)
    metric.update(rank_one[:20])
    metric.update(rank_one[20:])
    assert metric.compute().item() == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match="dimension 12"):
        metric.update(torch.randn(3, 5))


def test_effective_rank_metric_forward_accumulates() -> None:
    z = torch.randn(90, 6, generator=_gen(16))
    metric = EffectiveRank()
    for batch in _batches(z, [30, 30, 30]):
        torch.testing.assert_close(metric(batch), effective_rank(batch), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(metric.compute(), effective_rank(z), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings(_NO_UPDATE_WARNING)
@pytest.mark.parametrize("num_classes", [4, [4, 3]])
def test_knn_metric_over_batches_and_reset(num_classes) -> None:
    g = _gen(17)
    base, labels = _clusters(25, 4, 10, seed=18)
    # Heavy noise makes the clusters overlap, so the accuracy is strictly between 0 and 1.
    bank = base + 5.0 * torch.randn(base.shape, generator=g)  # (100, 10)
    query, query_labels = base[::2] + 5.0 * torch.randn(50, 10, generator=g), labels[::2]
    if not isinstance(num_classes, int):
        labels = torch.stack([labels, labels % 3], 1)  # (100, 2)
        query_labels = torch.stack([query_labels, (query_labels + 1) % 3], 1)  # (50, 2)
    metric = KNNAccuracy(num_classes, k=5, temperature=0.1)
    # Queries before the bank: the order of the calls does not matter.
    for f, y in zip(_batches(query, [20, 30]), _batches(query_labels, [20, 30]), strict=True):
        metric.update(f, y)
    for f, y in zip(_batches(bank, [40, 40, 20]), _batches(labels, [40, 40, 20]), strict=True):
        metric.update_bank(f, y)
    expected = knn_accuracy(query, query_labels, bank, labels, num_classes, k=5, temperature=0.1)
    got = metric.compute()
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected)
    assert (0.0 < got).all() and (got < 1.0).any()

    # A later bank update invalidates the cached result.
    metric.update_bank(query, query_labels)
    torch.testing.assert_close(
        metric.compute(),
        knn_accuracy(
            query,
            query_labels,
            torch.cat([bank, query]),
            torch.cat([labels, query_labels]),
            num_classes,
            k=5,
            temperature=0.1,
        ),
    )

    metric.reset()
    with pytest.raises(ValueError, match=r"empty bank; call update_bank"):
        metric.compute()
    metric.update_bank(bank, labels)
    with pytest.raises(ValueError, match=r"no queries; call update"):
        metric.compute()


def test_knn_metric_caps_and_checks() -> None:
    metric = KNNAccuracy(3, max_bank_size=10, max_query_size=4)
    metric.update_bank(torch.randn(6, 4), torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"bank would hold 11 rows .* raise `max_bank_size`"):
        metric.update_bank(torch.randn(5, 4), torch.zeros(5, dtype=torch.long))
    metric.update_bank(torch.randn(4, 4), torch.zeros(4, dtype=torch.long))  # exactly 10: fine
    with pytest.raises(ValueError, match=r"query would hold 5 rows .* raise `max_query_size`"):
        metric.update(torch.randn(5, 4), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="dimension 4 as already stored"):
        metric.update(torch.randn(2, 7), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"of shape \(2,\) because `num_classes` is an int"):
        metric.update(torch.randn(2, 4), torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(NotImplementedError, match="update_bank"):
        metric(torch.randn(2, 4), torch.zeros(2, dtype=torch.long))


# ---------------------------------------------------------------------------------------------
# DDP: two CPU processes with gloo, each updating with part of the data.
# ---------------------------------------------------------------------------------------------


def _ddp_data():
    g = _gen(19)
    z1 = torch.randn(64, 8, generator=g)
    z2 = z1 + 0.3 * torch.randn(64, 8, generator=g)
    z = torch.randn(64, 8, generator=g) * torch.linspace(0.2, 2.0, 8)
    base, bank_labels = _clusters(16, 4, 8, seed=20)
    bank = base + 5.0 * torch.randn(base.shape, generator=g)  # (64, 8), overlapping clusters
    query = base[::2] + 5.0 * torch.randn(32, 8, generator=g)  # (32, 8)
    query_labels = bank_labels[::2]
    return z1, z2, z, bank, bank_labels, query, query_labels


def _ddp_worker(rank: int, world_size: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        z1, z2, z, bank, bank_labels, query, query_labels = _ddp_data()
        # Uneven shares (37 / 27 rows) exercise torchmetrics' padded gather.
        share = slice(0, 37) if rank == 0 else slice(37, 64)
        bank_share = slice(0, 40) if rank == 0 else slice(40, 64)
        query_share = slice(0, 13) if rank == 0 else slice(13, 32)
        attr_labels = torch.stack([bank_labels, bank_labels % 2], 1)  # (64, 2)
        attr_query_labels = torch.stack([query_labels, query_labels % 2], 1)  # (32, 2)

        align, unif, erank = Alignment(), Uniformity(max_samples=64), EffectiveRank()
        knn, knn_attr = KNNAccuracy(4, k=5), KNNAccuracy([4, 2], k=5)
        rows = torch.arange(64)[share]
        for batch in (rows[:10], rows[10:]):
            align.update(z1[batch], z2[batch])
            unif.update(z[batch])
            erank.update(z[batch])
        knn.update_bank(bank[bank_share], bank_labels[bank_share])
        knn.update(query[query_share], query_labels[query_share])
        knn_attr.update_bank(bank[bank_share], attr_labels[bank_share])
        knn_attr.update(query[query_share], attr_query_labels[query_share])

        torch.testing.assert_close(align.compute(), alignment(z1, z2))
        torch.testing.assert_close(unif.compute(), uniformity(z))
        torch.testing.assert_close(erank.compute(), effective_rank(z), rtol=1e-5, atol=1e-5)
        expected = knn_accuracy(query, query_labels, bank, bank_labels, 4, k=5)
        assert 0.0 < expected.item() < 1.0
        torch.testing.assert_close(knn.compute(), expected)
        torch.testing.assert_close(
            knn_attr.compute(),
            knn_accuracy(query, attr_query_labels, bank, attr_labels, [4, 2], k=5),
        )
        # The local state is restored after compute, so accumulation goes on per rank.
        assert sum(e.shape[0] for e in unif.embeddings) == (37 if rank == 0 else 27)
    finally:
        dist.destroy_process_group()


def test_metrics_under_ddp_match_single_process(tmp_path) -> None:
    init_file = os.path.join(tmp_path, "dist_init")
    mp.spawn(_ddp_worker, args=(2, init_file), nprocs=2, join=True)


def test_centred_effective_rank_ignores_a_common_mean_and_the_metric_matches():
    g = torch.Generator().manual_seed(7)
    z = torch.randn(400, 8, generator=g) + 50.0  # isotropic spread around a large mean
    assert effective_rank(z).item() < 2.0  # the mean dominates the raw spectrum
    assert effective_rank(z, center=True).item() > 7.0
    metric = EffectiveRank(center=True)
    for chunk in z.split(64):
        metric.update(chunk)
    torch.testing.assert_close(
        metric.compute(), effective_rank(z, center=True), rtol=1e-4, atol=1e-4
    )


def test_embedding_std_is_zero_when_collapsed_and_matches_the_functional():
    g = torch.Generator().manual_seed(8)
    z = torch.randn(300, 16, generator=g)
    assert embedding_std(torch.ones(10, 16)).item() == 0.0
    # Spread over the sphere: about 1/sqrt(D) per dimension.
    assert abs(embedding_std(z).item() * 16**0.5 - 1.0) < 0.1
    reference = torch.nn.functional.normalize(z.double(), dim=1).std(0, correction=0).mean()
    metric = EmbeddingStd()
    for chunk in z.split(70):
        metric.update(chunk)
    torch.testing.assert_close(metric.compute(), reference.float(), rtol=1e-5, atol=1e-6)
