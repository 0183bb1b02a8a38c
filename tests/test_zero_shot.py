"""Zero-shot classification from class prompts, on embeddings with known answers."""

import pytest
import torch
import torch.nn.functional as F

from contrastive.evaluation.zero_shot import (
    zero_shot_accuracy,
    zero_shot_logits,
    zero_shot_metric,
    zero_shot_weights,
)


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
    labels = torch.tensor([0, 1, 1])
    assert zero_shot_accuracy(images, labels, weights).item() == pytest.approx(2 / 3)
    metric = zero_shot_metric(2)
    for rows in (slice(0, 1), slice(1, 3)):
        metric.update(zero_shot_logits(images[rows], weights), labels[rows])
    assert metric.compute().item() == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="'\\{\\}'"):
        zero_shot_weights(encode, ["cat"], ["a photo"])
