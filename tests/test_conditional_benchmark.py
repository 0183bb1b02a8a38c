"""The conditional benchmark and triplet accuracy on a constructed world with known answers,
the metrics over batches, and 2 processes against one."""

import pytest
import torch
import torch.nn.functional as F

from contrastive.evaluation.conditional_benchmark import (
    BenchmarkFunctions,
    ConditionalBenchmark,
    ConditionalModel,
    ConditionSpec,
    TripletAccuracy,
    conditional_benchmark,
    triplet_correct,
)
from contrastive.evaluation.retrieval import rank_relevant
from tests.ddp import run_ddp

# A constructed world: 2 attributes, each image a one-hot of its color in dims 0-2 and of its
# shape in dims 3-5. The "image" embedding mixes them; a perfect conditioned model keeps only
# the block the text names; text embeddings are the class one-hots in the same space.
COLORS, SHAPES = ("red", "green", "blue"), ("circle", "square", "star")
WORDS = [f"both are {w}" for w in COLORS + SHAPES]  # text i is the one-hot of dim i


class World:
    """A :class:`ConditionalModel` whose "images" are their own 6-d embeddings."""

    def encode_image(self, images):
        return images.float()

    def encode_text(self, texts):
        return torch.eye(6)[[WORDS.index(t) for t in texts]]  # (k, 6), in the image space

    def condition_inputs(self, images):
        return images.float()

    def condition_from(self, inputs, text):  # keep the block (colour 0-2, shape 3-5) named
        is_shape = text[:, 3:].sum(1, keepdim=True) > 0  # (B, 1)
        return inputs * torch.cat([~is_shape.expand(-1, 3), is_shape.expand(-1, 3)], 1)


def world(n: int = 60):
    g = torch.Generator().manual_seed(0)
    color, shape = torch.randint(0, 3, (n,), generator=g), torch.randint(0, 3, (n,), generator=g)
    x = torch.cat([F.one_hot(color, 3), F.one_hot(shape, 3)], 1).float()  # (n, 6)
    return World(), x, {"color": color, "shape": shape}


SPECS = [
    ConditionSpec("color", "seen", ("both are {value}",), COLORS),
    ConditionSpec("shape", "held-out", ("both are {value}",), SHAPES),
]


def test_the_world_is_a_conditional_model():
    assert isinstance(World(), ConditionalModel)


def test_the_benchmark_gives_the_known_answers_of_a_constructed_world():
    model, x, labels = world()
    out = conditional_benchmark(model, x, x, labels, SPECS, num_queries=20)
    for c, p in (("color", "seen"), ("shape", "held-out")):
        # Conditioned on the named block, every relevant image ties at the top: perfect.
        m = out[(c, p, "conditioned")]
        assert m["mAP"] == pytest.approx(1.0) and m["R@1"] == 1.0 and m["triplet"] == 1.0
        # Text alone names the query's class: it also finds the relevant ones first.
        assert out[(c, p, "text")]["mAP"] == pytest.approx(1.0)
        # The mixed image embedding ranks images sharing both attributes first, then either:
        # for one attribute it is strictly worse than the conditioned model.
        assert out[(c, p, "image")]["mAP"] < 0.9
        assert out[(c, p, "image")]["R@1"] == 1.0  # the best match shares both attributes


def test_the_wrong_condition_ranks_under_another_conditions_text():
    model, x, labels = world()
    out = conditional_benchmark(model, x, x, labels, SPECS, num_queries=20)
    # A colour query under its shape words ("both are star") keeps the shape block: the
    # colour-relevant images are found no better than by the image, far below the conditioned.
    wrong, image = out[("color", "seen", "wrong condition")], out[("color", "seen", "image")]
    assert out[("color", "seen", "conditioned")]["mAP"] == pytest.approx(1.0)
    assert wrong["mAP"] <= image["mAP"] + 1e-6
    # By hand: the queries' shape texts, the conditioned scores under them, the one ranking.
    texts = [f"both are {SHAPES[s]}" for s in labels["shape"][:20]]
    t = model.encode_text(texts)
    q = model.condition_from(x[:20], t)  # (Q, 6)
    keys = torch.stack([model.condition_from(x, row.expand(60, -1)) for row in t])  # (Q, G, 6)
    scores = torch.einsum("qd,qgd->qg", F.normalize(q, dim=-1), F.normalize(keys, dim=-1))
    self_mask = torch.eye(60, dtype=torch.bool)[:20]
    relevant = (labels["color"][:20, None] == labels["color"][None]) & ~self_mask
    expected = rank_relevant(scores.masked_fill(self_mask, float("-inf")), relevant)
    assert wrong["mAP"] == pytest.approx(expected.ap.mean().item())
    one = conditional_benchmark(model, x, x, labels, SPECS[:1], num_queries=20)
    assert ("color", "seen", "wrong condition") not in one  # no other condition to name


def test_the_probe_upper_bound_reaches_one_on_separable_features():
    model, x, labels = world()
    noisy = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    bank_x, bank_y = world(200)[1:]
    bank = (bank_x + 0.05 * torch.randn(bank_x.shape), bank_y)
    out = conditional_benchmark(model, x, noisy, labels, SPECS, num_queries=20, bank=bank)
    for c, p in (("color", "seen"), ("shape", "held-out")):
        assert out[(c, p, "probe")]["mAP"] > 0.99 and out[(c, p, "probe")]["R@1"] == 1.0
        assert out[(c, p, "image")]["mAP"] < 0.9  # the mixed embedding alone is not
    assert all(s != "probe" for _, _, s in conditional_benchmark(model, x, x, labels, SPECS))


def test_image_baseline_map_is_what_the_ranking_implies():
    model, x, labels = world()
    out = conditional_benchmark(model, x, x, labels, SPECS[:1], num_queries=60)
    image = F.normalize(x, dim=-1)
    scores = (image @ image.T).fill_diagonal_(float("-inf"))
    same = labels["color"][:, None] == labels["color"][None]
    relevant = same & ~torch.eye(60, dtype=torch.bool)
    expected = rank_relevant(scores, relevant).ap.mean().item()
    assert out[("color", "seen", "image")]["mAP"] == pytest.approx(expected)


def test_triplet_accuracy_counts_per_condition_and_scorer():
    model, x, _ = world(8)
    # Anchors and positives share their colour; negatives differ in it and share the shape.
    anchor = x[:4]
    positive = torch.cat([anchor[:, :3], x[4:8, 3:]], 1)
    negative = torch.cat([anchor[:, :3].roll(1, dims=1), anchor[:, 3:]], 1)
    batch = {
        "image": anchor,
        "view": positive,
        "negative": negative,
        "text": [f"both are {COLORS[int(c)]}" for c in anchor[:, :3].argmax(1)],
    }
    correct = triplet_correct(model, batch)
    assert correct["conditioned"].all() and correct["text"].all()
    metric = TripletAccuracy(["color", "shape"])
    keep = torch.tensor([True, True, True, False])
    metric.update(correct, ["color"] * 4, keep)
    out = metric.compute()
    assert out[("color", "triplets", "conditioned")]["triplet"] == 1.0
    assert ("shape", "triplets", "conditioned") not in out  # no shape triplet was seen
    assert metric.total[0].tolist() == [3.0] * 4  # the row without a negative is left out
    with pytest.raises(ValueError, match="conditions \\['size'\\]"):
        metric.update(correct, ["size"] * 4, keep)


def test_the_metric_over_batches_equals_the_functional_form_and_keeps_a_bounded_gallery():
    model, x, labels = world()
    y = torch.stack([labels["color"], labels["shape"]], 1)
    functions = BenchmarkFunctions(model.condition_from, model.encode_text)
    metric = ConditionalBenchmark(functions, SPECS, ["color", "shape"], num_queries=20)
    for rows in torch.arange(60).split(25):
        metric.update(x[rows], x[rows], y[rows], rows)
    assert metric.compute() == conditional_benchmark(model, x, x, labels, SPECS, 20)
    probed = ConditionalBenchmark(functions, SPECS, ["color", "shape"], num_queries=20)
    for rows in torch.arange(60).flip(0).split(25):  # the bank, in another order: put back
        probed.update_bank(x[rows], y[rows], rows)
        probed.update(x[rows.flip(0)], x[rows.flip(0)], y[rows.flip(0)], rows.flip(0))
    bank = conditional_benchmark(model, x, x, labels, SPECS, 20, bank=(x, labels))
    assert probed.compute() == bank and ("color", "seen", "probe") in bank
    assert metric.gallery_size == 60
    small = ConditionalBenchmark(functions, SPECS, ["color", "shape"], max_gallery=30)
    for rows in torch.arange(60).split(25):
        small.update(x[rows], x[rows], y[rows], rows)
    assert sum(len(e) for e in small.embeddings) == 30 and int(small.dropped) == 30
    with pytest.raises(ValueError, match="not label fields"):
        ConditionalBenchmark(functions, SPECS, ["color"])


def _ddp_benchmark(rank: int, world_size: int) -> dict:
    model, x, labels = world()
    y = torch.stack([labels["color"], labels["shape"]], 1)
    functions = BenchmarkFunctions(model.condition_from, model.encode_text)
    metric = ConditionalBenchmark(functions, SPECS, ["color", "shape"], num_queries=20)
    rows = torch.arange(60)[rank::2]  # a DistributedSampler's share: dataset order is lost
    for part in rows.split(11):
        metric.update(x[part], x[part], y[part], part)
    triplets = TripletAccuracy(["color"])
    correct = {
        s: torch.arange(10)[rank::2] % 3 == 0
        for s in ("conditioned", "image", "text", "image+text")
    }
    triplets.update(correct, ["color"] * 5, torch.ones(5, dtype=torch.bool))
    return {"benchmark": metric.compute(), "triplets": triplets.compute()}


def test_two_processes_equal_one_process_on_the_same_gallery():
    model, x, labels = world()
    expected = conditional_benchmark(model, x, x, labels, SPECS, num_queries=20)
    for result in run_ddp(_ddp_benchmark):
        assert result["benchmark"] == expected  # the same queries, draws and ranks
        share = result["triplets"][("color", "triplets", "conditioned")]["triplet"]
        assert share == pytest.approx(4 / 10)  # 0, 3, 6, 9 of 0..9, counted over both ranks
