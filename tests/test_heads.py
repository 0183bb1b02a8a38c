import pytest
import torch
from torch import nn

from contrastive.heads import MLPHead, PredictionHead, ProjectionHead


def _count(head: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in head.modules())


@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("last_batch_norm", [True, False])
def test_layout_shapes_and_gradients(num_layers, batch_norm, last_batch_norm):
    torch.manual_seed(0)
    head = MLPHead(6, 10, 4, num_layers, batch_norm, last_batch_norm).train()
    assert (head.in_dim, head.out_dim) == (6, 4)

    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in head.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(linears) == num_layers
    assert [(m.in_features, m.out_features) for m in linears] == list(
        zip([6] + [10] * (num_layers - 1), [10] * (num_layers - 1) + [4], strict=True)
    )
    assert _count(head, nn.ReLU) == num_layers - 1
    assert len(norms) == (num_layers - 1) * batch_norm + last_batch_norm
    assert (linears[-1].bias is None) == last_batch_norm
    assert all((m.bias is None) == batch_norm for m in linears[:-1])
    if last_batch_norm:
        assert isinstance(head.layers[-1], nn.BatchNorm1d) and not head.layers[-1].affine
    else:
        assert isinstance(head.layers[-1], nn.Linear)

    out = head(torch.randn(8, 6))
    assert out.shape == (8, 4)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_last_batch_norm_standardises_the_output():
    torch.manual_seed(0)
    out = MLPHead(6, 10, 4, last_batch_norm=True).train()(3 + 5 * torch.randn(64, 6))
    torch.testing.assert_close(out.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(0, unbiased=False), torch.ones(4), atol=1e-3, rtol=0)


@pytest.mark.parametrize(
    "args, match",
    [
        ((6, 10, 4, 0), "expected num_layers >= 1, got 0"),
        ((0, 10, 4), "expected in_dim, hidden_dim, out_dim > 0, got 0, 10, 4"),
        ((6, 0, 4), "got 6, 0, 4"),
        ((6, 10, -1), "got 6, 10, -1"),
    ],
)
def test_invalid_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        MLPHead(*args)


def test_wrong_input_shape():
    head = MLPHead(6, 10, 4)
    with pytest.raises(ValueError, match=r"expected input \(B, 6\), got \(8, 5\)"):
        head(torch.randn(8, 5))
    with pytest.raises(ValueError, match=r"got \(6,\)"):
        head(torch.randn(6))


@pytest.mark.parametrize(
    "cls, hidden, out", [(ProjectionHead, 2048, 128), (PredictionHead, 4096, 256)]
)
def test_paper_defaults(cls, hidden, out):
    head = cls(16)
    assert isinstance(head, MLPHead) and (head.in_dim, head.out_dim) == (16, out)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, hidden), (hidden, out)]
    assert _count(head, nn.BatchNorm1d) == 1
    assert head(torch.randn(2, 16)).shape == (2, out)
    custom = cls(16, hidden_dim=8, out_dim=3, num_layers=3, last_batch_norm=True)
    assert _count(custom, nn.Linear) == 3 and custom.out_dim == 3
