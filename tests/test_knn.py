"""Weighted kNN: the functional form against a slow loop from InstDisc's vote, the metric
against the functional form over batches, and the metric under 2-process DDP (with dataset ids
and a DistributedSampler's padding) against one process."""

from __future__ import annotations

import math

import pytest
import torch

from contrastive.evaluation.knn import KNNAccuracy, knn_accuracy, knn_predict
from tests.ddp import run_ddp

_NO_UPDATE_WARNING = "ignore:The ``compute`` method of metric:UserWarning"


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


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
    for f, y in zip(query.split([20, 30]), query_labels.split([20, 30]), strict=True):
        metric.update(f, y)
    for f, y in zip(bank.split([40, 40, 20]), labels.split([40, 40, 20]), strict=True):
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


def _ddp_knn(rank: int, world_size: int) -> torch.Tensor:
    base, labels = _clusters(16, 4, 8, seed=20)
    g = _gen(21)
    bank = base + 5.0 * torch.randn(base.shape, generator=g)  # (64, 8), overlapping clusters
    query = base[::2] + 5.0 * torch.randn(32, 8, generator=g)
    # A DistributedSampler's share: every other row, the last padded with a repeat of row 0.
    order = torch.cat([torch.arange(64), torch.tensor([0, 1])])[rank::2]
    q_order = torch.arange(32)[rank::2]
    metric = KNNAccuracy([4, 2], k=5)
    both = torch.stack([labels, labels % 2], 1)
    metric.update_bank(bank[order], both[order], ids=order)
    metric.update(query[q_order], both[::2][q_order], ids=q_order)
    return metric.compute()


def test_the_metric_on_two_processes_equals_one_process_on_all_the_data():
    base, labels = _clusters(16, 4, 8, seed=20)
    g = _gen(21)
    bank = base + 5.0 * torch.randn(base.shape, generator=g)
    query = base[::2] + 5.0 * torch.randn(32, 8, generator=g)
    both = torch.stack([labels, labels % 2], 1)
    expected = knn_accuracy(query, both[::2], bank, both, [4, 2], k=5)
    assert (0 < expected).all() and (expected < 1).all()
    for result in run_ddp(_ddp_knn):
        torch.testing.assert_close(result, expected)
