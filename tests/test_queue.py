"""The negative queue (queue.py) and the losses' negative-only candidates: against loops written
from the papers, and through SimCLR and CLIP. Under DDP (every rank holds the same queue, the
last K gathered rows) it is tested with gradient caching in test_gradcache.py, in one spawn."""

import math

import pytest
import torch
import torch.nn.functional as F

from contrastive.gradcache import by_view
from contrastive.losses import clip_loss, info_nce, info_nce_tiled
from contrastive.methods import CLIP, SimCLR, SupCon
from contrastive.queue import EmbeddingQueue

TINY = dict(backbone_kwargs={"width": 4}, projector_hidden_dim=16, projector_dim=8)


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_the_queue_keeps_the_last_rows_pushed_oldest_first():
    queue = EmbeddingQueue(5, 2)
    assert queue.negatives().shape == (0, 2)  # nothing pushed yet: no negatives
    rows = torch.arange(26, dtype=torch.float32).view(13, 2)  # row i is (2i, 2i + 1)
    queue.push(rows[:3])
    torch.testing.assert_close(queue.negatives(), rows[:3])
    queue.push(rows[3:7])  # wraps around
    torch.testing.assert_close(queue.negatives(), rows[2:7])
    queue.push(rows[7:13])  # more than the queue holds: its last 5 rows
    torch.testing.assert_close(queue.negatives(), rows[8:13])
    assert set(queue.state_dict()) == {"embeddings", "pointer", "count"}  # saved: resume goes on
    resumed = EmbeddingQueue(5, 2)
    resumed.load_state_dict(queue.state_dict())
    resumed.push(rows[:1])
    torch.testing.assert_close(resumed.negatives(), torch.cat([rows[9:13], rows[:1]]))


def test_queue_errors_are_one_line():
    with pytest.raises(ValueError, match="expected queue size >= 1"):
        EmbeddingQueue(0, 4)
    with pytest.raises(ValueError, match=r"expected \(M, 4\) embeddings"):
        EmbeddingQueue(3, 4).push(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="queue_size must be >= 0"):
        SimCLR(**TINY, queue_size=-1)
    with pytest.raises(ValueError, match="SupCon takes no queue_size"):
        SupCon(**TINY, queue_size=8)
    with pytest.raises(ValueError, match="queue_size needs loss='clip'"):
        _clip(loss="siglip", queue_size=8)
    with pytest.raises(ValueError, match=r"expected negatives \(K, 3\)"):
        info_nce(torch.zeros(2, 3), torch.zeros(2, 3), torch.arange(2), torch.arange(2), 0.1,
                 None, torch.zeros(4, 2))  # fmt: skip


def _info_nce_loop(anchors, candidates, anchor_labels, candidate_labels, t, positions, negatives):
    """InfoNCE from the paper's sum, anchor by anchor: the queue's rows join the denominator
    and are never positives."""
    cos = lambda x, y: float(F.cosine_similarity(x, y, dim=0))  # noqa: E731
    losses = []
    for i, a in enumerate(anchors):
        others = [j for j in range(len(candidates)) if positions is None or j != positions[i]]
        denominator = sum(math.exp(cos(a, candidates[j]) / t) for j in others)
        denominator += sum(math.exp(cos(a, n) / t) for n in negatives)
        positives = [j for j in others if candidate_labels[j] == anchor_labels[i]]
        if positives:
            terms = [math.log(math.exp(cos(a, candidates[p]) / t) / denominator) for p in positives]
            losses.append(-sum(terms) / len(positives))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("loss", ["dense", "tiled"])
@pytest.mark.parametrize("labels", ["nt_xent", "supcon"])
def test_info_nce_with_negatives_equals_the_loop(loss, labels):
    z, queue = _randn(10, 4, seed=0), _randn(7, 4, seed=1)
    ids = (
        torch.arange(5).repeat(2)
        if labels == "nt_xent"
        else torch.tensor([0, 0, 1, 2] * 2 + [1, 3])
    )
    anchors, positions = z[3:8], torch.arange(3, 8)  # this rank's rows among the gathered
    args = (anchors, z, ids[3:8], ids, 0.2, positions)
    fn = info_nce if loss == "dense" else lambda *a, negatives: info_nce_tiled(*a, 3, negatives)
    got = fn(*args, negatives=queue)
    want = _info_nce_loop(*args, negatives=queue)
    assert got.item() == pytest.approx(want, rel=1e-12)
    assert got > info_nce(*args)  # more negatives, larger loss
    assert fn(*args, negatives=queue[:0]).item() == pytest.approx(info_nce(*args).item())


def test_clip_loss_with_queues_classifies_against_the_other_modality_queue():
    images, texts = _randn(6, 4, seed=2), _randn(6, 4, seed=3)
    image_queue, text_queue = _randn(5, 4, seed=4), _randn(3, 4, seed=5)
    local, positions = slice(2, 5), torch.arange(2, 5)
    got = clip_loss(
        images[local], texts[local], images, texts, positions, 1 / 0.2, None,
        image_negatives=image_queue, text_negatives=text_queue,
    )  # fmt: skip
    ids = torch.arange(6)
    image_to_text = _info_nce_loop(images[local], texts, positions, ids, 0.2, None, text_queue)
    text_to_image = _info_nce_loop(texts[local], images, positions, ids, 0.2, None, image_queue)
    assert got.item() == pytest.approx((image_to_text + text_to_image) / 2, rel=1e-12)
    tiled = clip_loss(
        images[local], texts[local], images, texts, positions, 1 / 0.2, 2,
        image_negatives=image_queue, text_negatives=text_queue,
    )  # fmt: skip
    assert tiled.item() == pytest.approx(got.item(), rel=1e-12)


def _clip(**kwargs) -> CLIP:
    from contrastive.text import OpenCLIPText  # here: the DDP workers need no open_clip

    torch.manual_seed(0)
    text = OpenCLIPText(width=16, layers=1, heads=2, context_length=8, embed_dim=8)
    return CLIP(text_tower=text, embed_dim=8, backbone_kwargs={"width": 4}, **kwargs)


def _batch(step: int, n: int = 4) -> dict:
    g = torch.Generator().manual_seed(step)
    views = [torch.randn(n, 3, 16, 16, generator=g) for _ in range(2)]
    return {"views": views, "caption": [f"shape {step} {i}" for i in range(n)]}


def test_simclr_compares_with_the_previous_steps_as_negatives():
    torch.manual_seed(0)
    model = SimCLR(**TINY, queue_size=12).eval()  # eval: the same embeddings when recomputed
    queued = []
    for step in range(3):  # 8 rows per step: the queue wraps on the third
        batch = _batch(step)
        z = by_view(model.training_embeddings(batch)["z"]).detach()  # (8, D)
        ids = torch.arange(4).repeat(2)
        negatives = torch.cat(queued)[-12:] if queued else z[:0]
        want = info_nce(z, z, ids, ids, model.temperature, torch.arange(8), negatives)
        torch.testing.assert_close(model.training_loss(batch), want)
        queued.append(z)
        torch.testing.assert_close(model.queue.negatives(), torch.cat(queued)[-12:])


def test_clip_compares_images_with_queued_texts_and_texts_with_queued_images():
    model = _clip(queue_size=6).eval()
    batch = {**_batch(0), "views": _batch(0)["views"][:1]}
    first = model.training_embeddings(batch)
    model.training_loss(batch)
    batch = {**_batch(1), "views": _batch(1)["views"][:1]}
    e = model.training_embeddings(batch)
    images, texts = by_view(e["image"]).detach(), by_view(e["text"]).detach()
    queued_images, queued_texts = by_view(first["image"])[-6:], by_view(first["text"])[-6:]
    want = clip_loss(
        images, texts, images, texts, torch.arange(4), model.logit_scale(), None,
        image_negatives=queued_images, text_negatives=queued_texts,
    )  # fmt: skip
    torch.testing.assert_close(model.training_loss(batch), want)
    torch.testing.assert_close(model.text_queue.negatives()[-4:], texts)
