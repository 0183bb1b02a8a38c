"""MLP heads put on top of a backbone: projection heads and predictors."""

from __future__ import annotations

from torch import Tensor, nn


class MLPHead(nn.Module):
    """MLP mapping ``(B, in_dim)`` to ``(B, out_dim)``, the projector/predictor of SimCLR and BYOL.

    ``num_layers - 1`` hidden layers Linear -> BatchNorm1d (optional) -> ReLU, then a last
    Linear, optionally followed by a BatchNorm1d without affine parameters (the projector of
    SimSiam, Chen & He 2021, and of some BYOL variants). A Linear directly followed by a
    BatchNorm1d has no bias: the norm would subtract it again. BatchNorm needs ``B >= 2`` in
    training mode.

    Args:
        in_dim: Input features, usually the backbone's ``num_features``.
        hidden_dim: Width of the hidden layers (unused when ``num_layers == 1``).
        out_dim: Output features.
        num_layers: Number of Linear layers; 1 gives a single Linear.
        batch_norm: BatchNorm1d after each hidden Linear.
        last_batch_norm: BatchNorm1d(affine=False) after the last Linear.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int = 2,
        batch_norm: bool = True,
        last_batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"expected num_layers >= 1, got {num_layers}")
        if min(in_dim, hidden_dim, out_dim) < 1:
            raise ValueError(
                f"expected in_dim, hidden_dim, out_dim > 0, got {in_dim}, {hidden_dim}, {out_dim}"
            )
        self.in_dim = in_dim
        self.out_dim = out_dim
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
            layers.append(nn.Linear(d_in, d_out, bias=not batch_norm))
            layers += [nn.BatchNorm1d(d_out)] if batch_norm else []
            layers.append(nn.ReLU())
        layers.append(nn.Linear(dims[-1], out_dim, bias=not last_batch_norm))
        layers += [nn.BatchNorm1d(out_dim, affine=False)] if last_batch_norm else []
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Map features ``(B, in_dim)`` to ``(B, out_dim)``."""
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected input (B, {self.in_dim}), got {tuple(x.shape)}")
        return self.layers(x)


class ProjectionHead(MLPHead):
    """SimCLR's projection head g: Linear(2048) -> BN -> ReLU -> Linear(128).

    From Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
    Representations"; the hidden width 2048 is ResNet-50's feature width. Only the defaults
    differ from ``MLPHead``.

    Args:
        in_dim: Input features, the backbone's ``num_features``.
        hidden_dim: Width of the hidden layers.
        out_dim: Output features, the space the contrastive loss compares in.
        num_layers: Number of Linear layers.
        batch_norm: BatchNorm1d after each hidden Linear.
        last_batch_norm: BatchNorm1d(affine=False) after the last Linear.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        num_layers: int = 2,
        batch_norm: bool = True,
        last_batch_norm: bool = False,
    ) -> None:
        super().__init__(in_dim, hidden_dim, out_dim, num_layers, batch_norm, last_batch_norm)


class PredictionHead(MLPHead):
    """BYOL's predictor q: Linear(4096) -> BN -> ReLU -> Linear(256).

    From Grill et al. 2020, "Bootstrap Your Own Latent"; BYOL's projector has the same shape
    (use this class for it too, with ``in_dim`` the backbone's ``num_features``). Only the
    defaults differ from ``MLPHead``.

    Args:
        in_dim: Input features: the projector's ``out_dim`` for the predictor.
        hidden_dim: Width of the hidden layers.
        out_dim: Output features.
        num_layers: Number of Linear layers.
        batch_norm: BatchNorm1d after each hidden Linear.
        last_batch_norm: BatchNorm1d(affine=False) after the last Linear.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 4096,
        out_dim: int = 256,
        num_layers: int = 2,
        batch_norm: bool = True,
        last_batch_norm: bool = False,
    ) -> None:
        super().__init__(in_dim, hidden_dim, out_dim, num_layers, batch_norm, last_batch_norm)
