import pytest
import torch
import torch.nn.functional as F
from torchmetrics.retrieval import RetrievalHitRate

from contrastive.conditional_eval import (
    ConditionalModel,
    ConditionSpec,
    conditional_benchmark,
    conditional_report,
    distinct_texts,
    ranked_retrieval,
)


def test_ranked_retrieval_matches_torchmetrics_hit_rate_and_the_definition_of_ap():
    torch.manual_seed(0)
    scores, relevant = torch.randn(20, 30), torch.rand(20, 30) < 0.2
    relevant[0] = False  # a query without a relevant item: AP 0, no hit
    out = ranked_retrieval(scores, relevant, ks=(1, 5))
    indexes = torch.arange(20)[:, None].expand(20, 30)
    for k in (1, 5):
        hit = RetrievalHitRate(top_k=k, empty_target_action="neg")
        torch.testing.assert_close(out[f"R@{k}"].mean(), hit(scores, relevant, indexes=indexes))
    # Average precision from its definition: the mean, over the relevant items, of the
    # precision at each one's rank.
    for q in range(20):
        ranked = relevant[q][scores[q].argsort(descending=True)].tolist()
        precisions = [sum(ranked[: r + 1]) / (r + 1) for r, hit in enumerate(ranked) if hit]
        expected = sum(precisions) / len(precisions) if precisions else 0.0
        assert out["AP"][q].item() == pytest.approx(expected, rel=1e-6)


def test_ranked_retrieval_by_hand_and_ties_count_against_the_model():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1], [0.5, 0.5, 0.5, 0.5]])
    relevant = torch.tensor([[False, True, False, True], [True, False, False, False]])
    out = ranked_retrieval(scores, relevant, ks=(1, 2))
    # Row 0: relevant at ranks 2 and 4 -> AP = (1/2 + 2/4) / 2. Row 1: all tied -> rank 4.
    torch.testing.assert_close(out["AP"], torch.tensor([0.5, 0.25]))
    torch.testing.assert_close(out["R@1"], torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(out["R@2"], torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"\(Q, G\) alike"):
        ranked_retrieval(scores, relevant[:1])


# A constructed world: 2 attributes, each image a one-hot of its color in dims 0-2 and of its
# shape in dims 3-5. The "image" embedding mixes them; a perfect conditioned model keeps only
# the block the text names; text embeddings are the class one-hots in the same space.
COLORS, SHAPES = ("red", "green", "blue"), ("circle", "square", "star")


def world(n: int = 60):
    g = torch.Generator().manual_seed(0)
    color, shape = torch.randint(0, 3, (n,), generator=g), torch.randint(0, 3, (n,), generator=g)
    x = torch.cat([F.one_hot(color, 3), F.one_hot(shape, 3)], 1).float()  # (n, 6)
    words = [f"both are {w}" for w in COLORS + SHAPES]  # text i is the one-hot of dim i

    def embed_text(texts):
        return torch.eye(6)[[words.index(t) for t in texts]]  # (k, 6), in the image space

    def condition(inputs, text):  # keep the block (colour: 0-2, shape: 3-5) the text is in
        is_shape = text[:, 3:].sum(1, keepdim=True) > 0  # (B, 1)
        block = torch.cat([~is_shape.expand(-1, 3), is_shape.expand(-1, 3)], 1)
        return inputs * block

    model = ConditionalModel(
        condition=condition,
        condition_gallery=lambda x, t: condition(x, t.expand(len(x), -1)),
        embed_text=embed_text,
    )
    return model, x, {"color": color, "shape": shape}


def test_the_benchmark_gives_the_known_answers_of_a_constructed_world():
    model, x, labels = world()
    specs = [
        ConditionSpec("color", "seen", ("both are {value}",), COLORS),
        ConditionSpec("shape", "held-out", ("both are {value}",), SHAPES),
    ]
    out = conditional_benchmark(model, x, x, labels, specs, num_queries=20)
    # Conditioned on the named block, every relevant image ties at the top: perfect retrieval.
    for c, p in (("color", "seen"), ("shape", "held-out")):
        m = out[(c, p, "conditioned")]
        assert m["mAP"] == pytest.approx(1.0) and m["R@1"] == 1.0 and m["triplet"] == 1.0
        # Text alone names the query's class: it also finds the relevant ones first.
        assert out[(c, p, "text")]["mAP"] == pytest.approx(1.0)
    # The mixed image embedding ranks images sharing both attributes first, then either one:
    # for one attribute it is strictly worse than the conditioned model.
    for c, p in (("color", "seen"), ("shape", "held-out")):
        assert out[(c, p, "image")]["mAP"] < 0.9
        assert out[(c, p, "image")]["R@1"] == 1.0  # the best match shares both attributes
    report = conditional_report(out, gallery=60, queries=20)
    assert "Conditional retrieval (gallery 60, 20 queries)" in report
    assert report.splitlines()[-4].startswith("mean")


def test_image_baseline_map_is_what_the_ranking_implies():
    model, x, labels = world()
    spec = ConditionSpec("color", "seen", ("both are {value}",), COLORS)
    out = conditional_benchmark(model, x, x, labels, [spec], num_queries=60)
    image = F.normalize(x, dim=-1)
    scores = (image @ image.T).fill_diagonal_(float("-inf"))
    relevant = (labels["color"][:, None] == labels["color"][None]) & ~torch.eye(
        60, dtype=torch.bool
    )
    expected = ranked_retrieval(scores, relevant)["AP"].mean().item()
    assert out[("color", "seen", "image")]["mAP"] == pytest.approx(expected)


def test_distinct_texts_keep_first_appearance_and_index_every_text():
    unique, index = distinct_texts(["same color", "both are red", "same color", "same size"])
    assert unique == ["same color", "both are red", "same size"]
    assert index.tolist() == [0, 1, 0, 2]
    assert [unique[i] for i in index] == ["same color", "both are red", "same color", "same size"]
