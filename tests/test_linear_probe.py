"""The offline linear probe: perfect on linearly separable features, chance on shuffled labels,
deterministic for a seed, the metric equal to the functional form, and 2 processes equal to one."""

import pytest
import torch

from contrastive.evaluation.linear_probe import (
    LinearProbeAccuracy,
    fit_linear_classifier,
    fit_linear_probe,
    linear_probe_accuracy,
)
from tests.ddp import run_ddp


def _separable(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Five classes in 16 dimensions, each on its own side of a hyperplane with a margin, whose
    means are *not* far apart (kNN would not find them all: the labels are linear, not near)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    w = torch.randn(5, 16, generator=torch.Generator().manual_seed(99))
    scores = x @ w.T  # (n, 5)
    top2 = scores.topk(2, dim=1).values
    keep = top2[:, 0] - top2[:, 1] > 2.0  # a margin around every boundary
    return x[keep], scores[keep].argmax(dim=1)


def test_linearly_separable_features_are_read_perfectly():
    x, y = _separable(1200)
    bank, query = slice(0, len(x) // 2), slice(len(x) // 2, None)
    accuracy = linear_probe_accuracy(x[query], y[query], x[bank], y[bank], 5)
    assert accuracy.shape == () and accuracy.item() == 1.0


def test_shuffled_labels_are_read_at_chance():
    x, y = _separable(1200)
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    half = len(x) // 2
    accuracy = linear_probe_accuracy(x[half:], y[half:], x[:half], y[:half], 5).item()
    majority = torch.bincount(y[half:], minlength=5).max().item() / (len(y) - half)
    assert abs(accuracy - majority) < 0.08  # nothing linear to read: about the majority rate
    assert accuracy < 0.4  # far below the separable case


def test_the_probe_is_deterministic_and_chooses_a_decay_per_field_on_held_out_rows():
    x, y = _separable(600)
    labels = torch.stack([y, y[torch.randperm(len(y), generator=torch.Generator())]], 1)
    first = fit_linear_probe(x, labels, [5, 5], weight_decays=(1e-6, 1e-2, 1.0), seed=3)
    second = fit_linear_probe(x, labels, [5, 5], weight_decays=(1e-6, 1e-2, 1.0), seed=3)
    torch.testing.assert_close(first.weight, second.weight, rtol=0, atol=0)
    assert first.weight_decay == second.weight_decay
    assert all(d in (1e-6, 1e-2, 1.0) for d in first.weight_decay)
    assert first.weight_decay[1] >= first.weight_decay[0]  # noise wants the stronger decay
    only = fit_linear_probe(x, labels, [5, 5], weight_decays=(1e-3,))
    assert only.weight_decay == (1e-3, 1e-3)  # one value: no selection


def test_features_made_under_inference_mode_can_be_fit():
    x, y = _separable(200)
    with torch.inference_mode():
        x = x * 1.0  # an inference tensor, as the evaluation loop makes
        probe = fit_linear_classifier(x, y[:, None], [5], 1e-4)
    assert (probe.predict(x)[:, 0] == y).float().mean() > 0.95


def test_a_constant_feature_does_not_break_the_standardisation():
    x, y = _separable(300)
    x = torch.cat([x, torch.zeros(len(x), 3)], 1)  # padding pixels: always 0
    probe = fit_linear_classifier(x, y[:, None], [5], 1e-4)
    assert torch.isfinite(probe.weight).all() and (probe.predict(x)[:, 0] == y).all()


def test_the_metric_over_batches_equals_the_functional_form():
    x, y = _separable(600)
    labels = torch.stack([y, y % 2], 1)
    metric = LinearProbeAccuracy([5, 2], max_iter=50)
    for rows in (slice(0, 100), slice(100, 300)):
        metric.update_bank(x[rows], labels[rows])
    metric.update(x[300:], labels[300:])
    expected = linear_probe_accuracy(
        x[300:], labels[300:], x[:300], labels[:300], [5, 2], max_iter=50
    )
    torch.testing.assert_close(metric.compute(), expected)


def test_bad_inputs_are_clear_errors():
    x, y = _separable(50)
    with pytest.raises(ValueError, match="feature dimension"):
        linear_probe_accuracy(x[:, :3], y, x, y, 5)
    with pytest.raises(ValueError, match=r"labels of attribute 0 in \[0, 3\)"):
        linear_probe_accuracy(x, y, x, y, 3)
    with pytest.raises(ValueError, match="held_out"):
        fit_linear_probe(x, y[:, None], [5], held_out=1.0)


def _ddp_probe(rank: int, world_size: int) -> torch.Tensor:
    x, y = _separable(400)
    y = torch.stack([y, (y + (x[:, 0] > 0).long()) % 5], 1)  # a second, noisier field
    n, half = len(x), len(x) // 2
    # A DistributedSampler's shares of the bank (every other row, padded with row 0) and of the
    # queries; the ids put the rows back in order, so the held-out draw is one process's.
    bank_rows = torch.arange(half)
    if half % 2:
        bank_rows = torch.cat([bank_rows, bank_rows[:1]])
    bank_rows = bank_rows[rank::2]
    query_rows = torch.arange(half, n)[rank::2]
    metric = LinearProbeAccuracy([5, 5], max_iter=50)
    metric.update_bank(x[bank_rows], y[bank_rows], ids=bank_rows)
    metric.update(x[query_rows], y[query_rows], ids=query_rows)
    return metric.compute()


def test_two_processes_equal_one_process_on_the_same_data():
    x, y = _separable(400)
    y = torch.stack([y, (y + (x[:, 0] > 0).long()) % 5], 1)
    half = len(x) // 2
    expected = linear_probe_accuracy(x[half:], y[half:], x[:half], y[:half], [5, 5], max_iter=50)
    assert expected[1] < 1.0  # the second field is not trivial
    for result in run_ddp(_ddp_probe):
        torch.testing.assert_close(result, expected, rtol=0, atol=0)
