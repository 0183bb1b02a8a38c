"""Ranked retrieval: the one ranking against brute force and torchmetrics, image-text retrieval
on constructed embeddings with known answers, and the metric's cap and DDP equality."""

import hashlib

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.retrieval import RetrievalHitRate

from contrastive.evaluation.retrieval import (
    CrossModalRetrieval,
    rank_relevant,
    ranked_retrieval,
    retrieval_metrics,
    text_ids,
)
from tests.ddp import run_ddp


def test_rank_relevant_matches_torchmetrics_hit_rate_and_the_definition_of_ap():
    torch.manual_seed(0)
    scores, relevant = torch.randn(20, 30), torch.rand(20, 30) < 0.2
    relevant[0] = False  # a query without a relevant item: AP 0, no hit
    out = rank_relevant(scores, relevant)
    indexes = torch.arange(20)[:, None].expand(20, 30)
    for k in (1, 5):
        hit = RetrievalHitRate(top_k=k, empty_target_action="neg")
        torch.testing.assert_close(out.recall_at(k).mean(), hit(scores, relevant, indexes=indexes))
    assert out.first[0] == 30  # no relevant candidate: ranked past the end
    # Average precision from its definition: the mean, over the relevant items, of the
    # precision at each one's rank.
    for q in range(20):
        ranked = relevant[q][scores[q].argsort(descending=True)].tolist()
        precisions = [sum(ranked[: r + 1]) / (r + 1) for r, hit in enumerate(ranked) if hit]
        expected = sum(precisions) / len(precisions) if precisions else 0.0
        assert out.ap[q].item() == pytest.approx(expected, rel=1e-6)


def test_rank_relevant_by_hand_and_ties_count_against_the_model():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1], [0.5, 0.5, 0.5, 0.5]])
    relevant = torch.tensor([[False, True, False, True], [True, False, False, False]])
    out = rank_relevant(scores, relevant)
    # Row 0: relevant at ranks 2 and 4 -> AP = (1/2 + 2/4) / 2. Row 1: all tied -> rank 4.
    torch.testing.assert_close(out.ap, torch.tensor([0.5, 0.25]))
    assert out.first.tolist() == [1, 3]
    torch.testing.assert_close(out.recall_at(1), torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(out.recall_at(2), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"\(Q, G\) alike"):
        rank_relevant(scores, relevant[:1])


def _ranks_reference(queries, candidates, groups=None):
    """Brute force over the full matrix: irrelevant candidates at least as similar as the best
    relevant one."""
    groups = torch.arange(len(queries)) if groups is None else groups
    sim = F.normalize(queries, dim=1) @ F.normalize(candidates, dim=1).T
    ranks = []
    for i in range(len(queries)):
        relevant = [j for j in range(len(candidates)) if groups[j] == groups[i]]
        best = max(sim[i, j] for j in relevant)
        ranks.append(
            sum(1 for j in range(len(candidates)) if j not in relevant and sim[i, j] >= best)
        )
    return torch.tensor(ranks)


@pytest.mark.parametrize("chunk_size", [1, 3, 100])
def test_ranks_equal_the_brute_force_reference_for_any_chunk_size(chunk_size):
    g = torch.Generator().manual_seed(0)
    queries = torch.randn(20, 8, generator=g)
    candidates = queries + 1.5 * torch.randn(20, 8, generator=g)  # noisy pairs: varied ranks
    ranks = ranked_retrieval(queries, candidates, chunk_size=chunk_size).first
    torch.testing.assert_close(ranks, _ranks_reference(queries, candidates))
    assert ranks.min() == 0 and ranks.max() > 3  # the case is not trivial


def test_known_answers_perfect_pairs_shifted_pairs_and_a_collapse():
    images = torch.eye(6)
    perfect = retrieval_metrics(images, images + 0.01)
    assert perfect["i2t/R@1"] == 1 and perfect["t2i/R@1"] == 1 and perfect["i2t/median_rank"] == 1

    # Text i describes image i + 1: image i's own caption has similarity 0, like 4 others,
    # and the caption of image i - 1 scores 1: ties count against, so rank 5 of 6.
    shifted = retrieval_metrics(images, images.roll(-1, dims=0))
    assert shifted["i2t/R@5"] == 0 and shifted["i2t/R@10"] == 1
    assert shifted["i2t/median_rank"] == 6

    # Every caption embedded the same: a collapsed text tower must score at the bottom.
    collapsed = retrieval_metrics(images, torch.ones(6, 6))
    assert collapsed["i2t/R@5"] == 0 and collapsed["t2i/R@5"] == 0

    # Captions 3 and 4 swapped: those two images rank their own caption last (ties at 0).
    texts = images[[0, 1, 2, 4, 3, 5]]
    swapped = retrieval_metrics(images, texts, ks=(1, 5, 6))
    assert swapped["i2t/R@1"] == pytest.approx(4 / 6) and swapped["i2t/R@5"] == pytest.approx(4 / 6)
    assert swapped["i2t/R@6"] == 1 and swapped["t2i/median_rank"] == 1


def test_equal_captions_are_relevant_to_each_other():
    images = torch.eye(4)
    texts = images[[0, 1, 2, 2]]  # images 2 and 3 got the same caption
    alone = ranked_retrieval(images, texts).first
    assert alone.tolist() == [0, 0, 1, 3]  # image 2's own caption ties with 3's; 3's scores 0
    groups = text_ids(["a", "b", "c", "c"])
    grouped = ranked_retrieval(images, texts, groups, groups).first
    assert grouped.tolist() == [0, 0, 0, 2]  # any equal caption counts as a match
    torch.testing.assert_close(grouped, _ranks_reference(images, texts, groups))


def test_the_metric_accumulates_batches_to_the_functional_result():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(30, 8, generator=g)
    texts = images + torch.randn(30, 8, generator=g)
    metric = CrossModalRetrieval(ks=(1, 5), chunk_size=7)
    for rows in (slice(0, 11), slice(11, 30)):
        metric.update(images[rows], texts[rows])
    got = metric.compute()
    want = retrieval_metrics(images, texts, ks=(1, 5))
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], msg=key)
    with pytest.raises(ValueError, match="paired"):
        metric.update(torch.randn(3, 8), torch.randn(2, 8))


def test_text_ids_are_stable_across_processes():
    ids = text_ids(["a red star", "a red star", "a blue star"])
    assert ids[0] == ids[1] != ids[2]
    digest = hashlib.blake2b(b"a red star", digest_size=8).digest()
    assert ids[0] == int.from_bytes(digest, "little", signed=True)  # no salted hash()


def test_the_metric_keeps_at_most_max_samples_pairs_and_counts_the_rest():
    images, texts = torch.eye(8), torch.eye(8) + 0.1
    metric = CrossModalRetrieval(ks=(1,), max_samples=5)
    metric.update(images[:4], texts[:4])
    metric.update(images[4:], texts[4:])
    assert sum(len(x) for x in metric.images) == 5 and int(metric.dropped) == 3
    torch.testing.assert_close(metric.compute()["i2t/R@1"], torch.tensor(1.0))


def _pairs():
    g = torch.Generator().manual_seed(2)
    images = torch.randn(40, 8, generator=g)
    texts = images + 1.2 * torch.randn(40, 8, generator=g)
    captions = [f"caption {i % 17}" for i in range(40)]  # some captions repeat: they match
    return images, texts, captions


def _ddp_retrieval(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    images, texts, captions = _pairs()
    rows = torch.cat([torch.arange(40), torch.tensor([0, 1])])[rank::2]  # padded shares
    metric = CrossModalRetrieval(chunk_size=7)
    for part in rows.split(9):
        groups = text_ids([captions[i] for i in part])
        metric.update(images[part], texts[part], groups, ids=part)
    return metric.compute()


def test_two_processes_rank_what_one_process_ranks():
    images, texts, captions = _pairs()
    expected = retrieval_metrics(images, texts, text_ids(captions))
    for result in run_ddp(_ddp_retrieval):
        for key, value in expected.items():
            torch.testing.assert_close(result[key], value, msg=key)
