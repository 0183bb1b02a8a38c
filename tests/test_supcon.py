import pytest
import torch
from test_losses import supcon_out_loop

from contrastive.methods import SupCon


def _supcon() -> SupCon:
    torch.manual_seed(0)
    model = SupCon(label="shape", backbone_kwargs={"width": 4}, projector_hidden_dim=16)
    return model.eval()  # BatchNorm from running statistics: the loop below sees the same z


def test_loss_matches_the_paper_loop_with_a_label_field_and_lone_anchors():
    model = _supcon()
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(5, 3, 32, 32, generator=g) for _ in range(2)]
    shapes = torch.tensor([0, 0, 1, 2, 3])  # classes 1, 2, 3: positives only across views
    batch = {"views": views, "labels": {"shape": shapes, "color": torch.zeros(5, dtype=torch.long)}}
    loss = model.training_loss(batch)
    z = model.projector(model.backbone(torch.cat(views)))
    expected = supcon_out_loop(z, shapes.repeat(2).tolist(), model.temperature)
    torch.testing.assert_close(loss, expected)


def test_missing_label_field_is_named():
    model = _supcon()
    with pytest.raises(KeyError, match="'shape' is not in the batch; the data gives: color"):
        model.training_loss(
            {"views": [torch.zeros(2, 3, 32, 32)] * 2, "labels": {"color": torch.zeros(2)}}
        )
