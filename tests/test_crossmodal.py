"""Zero-shot and retrieval metrics on constructed embeddings with known answers."""

import hashlib

import pytest
import torch
import torch.nn.functional as F

from contrastive.crossmodal import (
    CrossModalRetrieval,
    retrieval_metrics,
    retrieval_ranks,
    text_ids,
    zero_shot_logits,
    zero_shot_weights,
)


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
    ranks = retrieval_ranks(queries, candidates, chunk_size=chunk_size)
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
    alone = retrieval_ranks(images, texts)
    assert alone.tolist() == [0, 0, 1, 3]  # image 2's own caption ties with 3's; 3's scores 0
    groups = text_ids(["a", "b", "c", "c"])
    grouped = retrieval_ranks(images, texts, groups, groups)
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


def test_zero_shot_weights_average_templates_and_classify_known_embeddings():
    table = {
        "a photo of a cat.": [1.0, 0.0, 0.0],
        "a drawing of a cat.": [2.0, 2.0, 0.0],  # normalised before the mean
        "a photo of a dog.": [0.0, 0.0, 3.0],
        "a drawing of a dog.": [0.0, 0.0, 1.0],
    }

    def encode(texts):
        return torch.tensor([table[t] for t in texts])

    weights = zero_shot_weights(encode, ["cat", "dog"], ["a photo of a {}.", "a drawing of a {}."])
    cat = F.normalize(
        torch.tensor([1.0, 0.0, 0.0]) + F.normalize(torch.tensor([1.0, 1.0, 0.0]), dim=0), dim=0
    )
    torch.testing.assert_close(weights, torch.stack([cat, torch.tensor([0.0, 0.0, 1.0])]))
    images = torch.tensor([[1.0, 0.2, 0.0], [0.1, 0.0, 5.0], [0.0, 1.0, 0.1]])
    assert zero_shot_logits(images, weights).argmax(dim=1).tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="'\\{\\}'"):
        zero_shot_weights(encode, ["cat"], ["a photo"])
