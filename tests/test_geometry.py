"""Embedding geometry: each functional form against a slow loop or numpy from the paper's
formula, each Metric against its functional form over batches, and the Metrics under 2-process
DDP against one process."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from contrastive.evaluation.geometry import (
    Alignment,
    CentredRankMe,
    EmbeddingStd,
    RankMe,
    Uniformity,
    alignment,
    centred_rankme,
    embedding_std,
    rankme,
    uniformity,
)
from tests.ddp import run_ddp


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


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


def _ref_rankme(z: np.ndarray, center: bool = False) -> float:
    """RankMe (Garrido et al. 2023, eq. 1) with numpy: the min(N, D) singular values."""
    z = z.astype(np.float64)
    if center:
        z = z - z.mean(axis=0, keepdims=True)
    s = np.linalg.svd(z, compute_uv=False)  # (min(N, D),)
    p = s / s.sum() + 1e-7
    return float(np.exp(-(p * np.log(p)).sum()))


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
    assert torch.isfinite(uniformity(z, 100.0))
    assert uniformity(z, 100.0).item() == pytest.approx(_ref_uniformity(z, 100.0), rel=1e-5)


@pytest.mark.parametrize(
    "rows, dims", [(400, 16), (50, 128), (64, 1024)], ids=["tall", "50x128", "wide"]
)
def test_rankme_and_its_metric_match_numpy_also_with_fewer_rows_than_dimensions(rows, dims):
    z = (torch.randn(rows, dims, generator=_gen(4)) * torch.linspace(0.2, 3.0, dims)).numpy()
    for functional, metric_class, center in (
        (rankme, RankMe, False),
        (centred_rankme, CentredRankMe, True),
    ):
        expected = _ref_rankme(z, center)
        assert functional(torch.from_numpy(z)).item() == pytest.approx(expected, rel=1e-5)
        metric = metric_class()
        for chunk in torch.from_numpy(z).float().split(17):
            metric.update(chunk)
        # The Gram matrix has D eigenvalues; only the top min(N, D) are singular values of Z.
        assert metric.compute().item() == pytest.approx(expected, rel=1e-6)  # was 1.3e-4 off


def test_rankme_extremes() -> None:
    g = _gen(5)
    rank_one = torch.randn(200, 1, generator=g) @ torch.randn(1, 16, generator=g)  # (200, 16)
    assert rankme(rank_one).item() == pytest.approx(1.0, abs=1e-3)
    isotropic = torch.randn(20000, 16, generator=g)
    assert rankme(isotropic).item() == pytest.approx(16.0, rel=0.01)
    basis, _ = torch.linalg.qr(torch.randn(16, 4, generator=g))  # (16, 4)
    sub = torch.randn(20000, 4, generator=g) @ basis.T  # a 4-d subspace with equal spread
    assert rankme(sub).item() == pytest.approx(4.0, rel=0.01)


def test_rankme_is_uncentred_as_published_and_the_centred_form_ignores_a_common_mean():
    z = torch.randn(400, 8, generator=_gen(7)) + 50.0  # isotropic spread around a large mean
    assert rankme(z).item() < 2.0  # the mean dominates the raw spectrum
    assert centred_rankme(z).item() > 7.0


def test_rankme_metric_resets_checks_and_forward_accumulates() -> None:
    g = _gen(15)
    z = torch.randn(90, 6, generator=g)
    metric = RankMe()
    for batch in z.split(30):
        torch.testing.assert_close(metric(batch), rankme(batch), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(metric.compute(), rankme(z), rtol=1e-5, atol=1e-5)
    metric.reset()
    with pytest.raises(ValueError, match="needs an update"):
        metric.compute()
    metric.update(z[:3])
    with pytest.raises(ValueError, match="dimension 6"):
        metric.update(torch.randn(3, 5))


def test_alignment_metric_over_batches_and_reset() -> None:
    g = _gen(13)
    z1, z2 = torch.randn(50, 8, generator=g), torch.randn(50, 8, generator=g)
    metric = Alignment(alpha=1.5)
    for a, b in zip(z1.split([7, 20, 1, 22]), z2.split([7, 20, 1, 22]), strict=True):
        metric.update(a, b)
    torch.testing.assert_close(metric.compute(), alignment(z1, z2, 1.5))
    metric.reset()
    metric.update(z1[:5], z2[:5])
    torch.testing.assert_close(metric.compute(), alignment(z1[:5], z2[:5], 1.5))


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric:UserWarning")
def test_uniformity_metric_over_batches_cap_and_reset() -> None:
    z = torch.randn(60, 8, generator=_gen(14))
    metric = Uniformity(t=2.0, max_samples=100)
    for batch in z.split([10, 25, 25]):
        metric.update(batch)
    torch.testing.assert_close(metric.compute(), uniformity(z, 2.0))
    capped = Uniformity(t=2.0, max_samples=33)
    for batch in z.split([10, 25, 25]):
        torch.testing.assert_close(capped(batch), uniformity(batch, 2.0))  # forward: the batch
    assert sum(e.shape[0] for e in capped.embeddings) == 33
    torch.testing.assert_close(capped.compute(), uniformity(z[:33], 2.0))
    capped.reset()
    with pytest.raises(ValueError, match="at least 2 embeddings, got 0"):
        capped.compute()


def test_embedding_std_is_zero_when_collapsed_and_matches_the_functional():
    z = torch.randn(300, 16, generator=_gen(8))
    assert embedding_std(torch.ones(10, 16)).item() == 0.0
    assert abs(embedding_std(z).item() * 16**0.5 - 1.0) < 0.1  # ~1/sqrt(D) on the sphere
    reference = torch.nn.functional.normalize(z.double(), dim=1).std(0, correction=0).mean()
    metric = EmbeddingStd()
    for chunk in z.split(70):
        metric.update(chunk)
    torch.testing.assert_close(metric.compute(), reference.float(), rtol=1e-5, atol=1e-6)


def _ddp_geometry(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    g = _gen(19)
    z1 = torch.randn(64, 8, generator=g)
    z2 = z1 + 0.3 * torch.randn(64, 8, generator=g)
    z = torch.randn(64, 8, generator=g) * torch.linspace(0.2, 2.0, 8) + 1.0
    share = slice(0, 37) if rank == 0 else slice(37, 64)  # uneven: torchmetrics pads the gather
    metrics = {
        "alignment": Alignment(),
        "uniformity": Uniformity(max_samples=64),
        "rankme": RankMe(),
        "centred_rankme": CentredRankMe(),
        "embedding_std": EmbeddingStd(),
    }
    rows = torch.arange(64)[share]
    for batch in (rows[:10], rows[10:]):
        metrics["alignment"].update(z1[batch], z2[batch])
        for name in ("uniformity", "rankme", "centred_rankme", "embedding_std"):
            metrics[name].update(z[batch])
    return {name: metric.compute() for name, metric in metrics.items()}


def test_the_metrics_on_two_processes_equal_one_process_on_all_the_data():
    g = _gen(19)
    z1 = torch.randn(64, 8, generator=g)
    z2 = z1 + 0.3 * torch.randn(64, 8, generator=g)
    z = torch.randn(64, 8, generator=g) * torch.linspace(0.2, 2.0, 8) + 1.0
    expected = {
        "alignment": alignment(z1, z2),
        "uniformity": uniformity(z),
        "rankme": rankme(z),
        "centred_rankme": centred_rankme(z),
        "embedding_std": embedding_std(z),
    }
    for result in run_ddp(_ddp_geometry):
        for name, value in expected.items():
            torch.testing.assert_close(result[name], value, rtol=1e-5, atol=1e-5, msg=name)
