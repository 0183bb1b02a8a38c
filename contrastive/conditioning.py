"""Conditioning mechanisms: small modules that turn an image embedding and a text condition
into an embedding in which images are close *in the respect the text names*.

Each mechanism maps image features ``(B, F)`` (the frozen image tower's output) and text
embeddings ``(B, E)`` to conditioned embeddings ``(B, D)``, and offers the pairwise form the
loss and the retrieval benchmark need: every image under every text, ``(N, M, D)``, computed
without running the image tower again. Chosen by name, like backbones:

==========  =====================================================================================
name        what the text does
==========  =====================================================================================
project     selects a subspace: a soft mask over the axes of a learnt embedding (the masks of
            Veit et al. 2017, predicted from the text)
film        scales and shifts each channel (Perez et al. 2018, arXiv:1709.07871)
combiner    a gated MLP over the concatenated image and text embeddings (Baldrati et al.
            2022, arXiv:2203.15375)
token       enters a ViT image tower as an extra input token (:class:`TokenConditioning`; it
            runs the tower, so it has no cheap pairwise form)
==========  =====================================================================================

The head mechanisms share a trainable trunk (an MLP on the image features, run once per
image), so the pairwise form only repeats the cheap text-dependent part.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_REGISTRY: dict[str, type[Conditioning]] = {}


def register_conditioning(name: str) -> Callable[[type], type]:
    """Register a :class:`Conditioning` subclass under ``name`` (must be new)."""

    def decorator(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"conditioning '{name}' is already registered")
        _REGISTRY[name] = cls
        return cls

    return decorator


def list_conditionings() -> list[str]:
    return sorted(_REGISTRY)


def create_conditioning(
    name: str, image_dim: int, text_dim: int, out_dim: int = 128, **kwargs
) -> Conditioning:
    """Build the conditioning mechanism ``name`` (see :func:`list_conditionings`).

    Args:
        name: ``project``, ``film``, ``combiner`` or ``token``.
        image_dim: ``F``, the width of the image features.
        text_dim: ``E``, the width of the text embeddings.
        out_dim: ``D``, the width of the conditioned embedding.
        **kwargs: the mechanism's own arguments (``hidden_dim``, ...).
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise ValueError(f"unknown conditioning '{name}'; known: {list_conditionings()}{hint}")
    return _REGISTRY[name](image_dim, text_dim, out_dim, **kwargs)


class Conditioning(nn.Module):
    """Base of the conditioning mechanisms.

    Attributes:
        pairwise_negatives: whether :meth:`pairwise` is cheap, so that the loss can condition
            every negative on the anchor's own text.
        takes_images: whether ``forward`` takes normalised images (and runs the image tower)
            instead of the tower's features.
    """

    pairwise_negatives = True
    takes_images = False

    def forward(self, features: Tensor, text: Tensor) -> Tensor:
        """Row ``i`` of ``features`` ``(B, F)`` under row ``i`` of ``text`` ``(B, E)``:
        ``(B, D)``."""
        raise NotImplementedError

    def pairwise(self, features: Tensor, text: Tensor) -> Tensor:
        """Every row of ``features`` ``(M, F)`` under every row of ``text`` ``(N, E)``:
        ``(N, M, D)``."""
        raise NotImplementedError


class HeadConditioning(Conditioning):
    """A head on the image features: a shared trunk, then a text-dependent part.

    Subclasses implement ``text_params(text) -> tensors (N, ...)`` and
    ``combine(trunk, *params) -> (..., D)`` for inputs that broadcast: ``trunk`` ``(B, H)``
    with params ``(B, ...)`` row by row, or ``(1, M, H)`` with ``(N, 1, ...)`` pairwise.

    Args:
        image_dim: ``F``.
        text_dim: ``E``.
        out_dim: ``D``.
        hidden_dim: ``H``, the trunk's width.
    """

    def __init__(self, image_dim: int, text_dim: int, out_dim: int, hidden_dim: int = 256) -> None:
        super().__init__()
        if min(image_dim, text_dim, out_dim, hidden_dim) < 1:
            raise ValueError(
                "image_dim, text_dim, out_dim and hidden_dim must be >= 1, got "
                f"{image_dim}, {text_dim}, {out_dim}, {hidden_dim}"
            )
        self.out_dim, self.hidden_dim = out_dim, hidden_dim
        # Ends in a BatchNorm: each trunk channel has zero mean over the images, so the text
        # cannot single out a constant direction, where every image would look alike (a
        # collapse that traps the conditions the image features encode less strongly).
        self.trunk = nn.Sequential(
            nn.Linear(image_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
        )

    def text_params(self, text: Tensor) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def combine(self, trunk: Tensor, *params: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, features: Tensor, text: Tensor) -> Tensor:
        return self.combine(self.trunk(features), *self.text_params(text))  # (B, D)

    def pairwise(self, features: Tensor, text: Tensor) -> Tensor:
        trunk = self.trunk(features)[None]  # (1, M, H)
        params = [p[:, None] for p in self.text_params(text)]  # (N, 1, ...)
        return self.combine(trunk, *params)  # (N, M, D)


@register_conditioning("project")
class Project(HeadConditioning):
    """The image embedding projected onto a text-dependent subspace of a learnt space.

    The trunk gives coordinates ``g(x)`` in a learnt ``D``-dimensional basis; the text selects
    the subspace by a soft mask ``m(t)`` in ``(0, 1)^D`` over those axes, and the embedding is
    ``m(t) * g(x)`` (the masks of Conditional Similarity Networks, Veit et al. 2017, with the
    mask predicted from free text instead of looked up per condition). A binary mask would be
    the orthogonal projection onto the selected axes.
    """

    def __init__(self, image_dim: int, text_dim: int, out_dim: int, hidden_dim: int = 256) -> None:
        super().__init__(image_dim, text_dim, out_dim, hidden_dim)
        # No bias: the coordinates keep the trunk's zero mean over the images.
        self.coordinates = nn.Linear(hidden_dim, out_dim, bias=False)
        self.mask = nn.Sequential(
            nn.Linear(text_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim)
        )

    def text_params(self, text: Tensor) -> tuple[Tensor]:
        return (torch.sigmoid(self.mask(text)),)  # (N, D)

    def combine(self, trunk: Tensor, mask: Tensor) -> Tensor:
        return mask * self.coordinates(trunk)


@register_conditioning("film")
class FiLM(HeadConditioning):
    """A text-predicted per-channel scale and shift of the trunk's output, then a linear map:
    ``W ((1 + gamma(t)) * g(x) + beta(t))``. ``gamma`` and ``beta`` start at zero, so the
    head starts as the unconditioned ``W g(x)``."""

    def __init__(self, image_dim: int, text_dim: int, out_dim: int, hidden_dim: int = 256) -> None:
        super().__init__(image_dim, text_dim, out_dim, hidden_dim)
        self.film = nn.Linear(text_dim, 2 * hidden_dim)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.out = nn.Sequential(nn.GELU(), nn.Linear(hidden_dim, out_dim))

    def text_params(self, text: Tensor) -> tuple[Tensor, Tensor]:
        gamma, beta = self.film(text).chunk(2, dim=-1)  # (N, H) each
        return gamma, beta

    def combine(self, trunk: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
        return self.out((1 + gamma) * trunk + beta)


@register_conditioning("combiner")
class Combiner(HeadConditioning):
    """A gated MLP over the concatenated image and text embeddings (the Combiner of
    Baldrati et al. 2022): ``gate * mlp([g(x), t]) + (1 - gate) * W g(x)``, with the gate
    ``sigmoid`` of a linear map of the same concatenation.

    The first layers act on the concatenation as a sum of an image part and a text part, so
    the text part is computed once per text in the pairwise form.
    """

    def __init__(self, image_dim: int, text_dim: int, out_dim: int, hidden_dim: int = 256) -> None:
        super().__init__(image_dim, text_dim, out_dim, hidden_dim)
        self.text_in = nn.Linear(text_dim, 2 * hidden_dim)  # mlp and gate inputs from text
        self.image_in = nn.Linear(hidden_dim, 2 * hidden_dim, bias=False)  # ... and from image
        self.mlp_out = nn.Linear(hidden_dim, out_dim)
        self.gate_out = nn.Linear(hidden_dim, out_dim)
        self.skip = nn.Linear(hidden_dim, out_dim, bias=False)

    def text_params(self, text: Tensor) -> tuple[Tensor]:
        return (self.text_in(text),)  # (N, 2H)

    def combine(self, trunk: Tensor, text_part: Tensor) -> Tensor:
        mlp, gate = (self.image_in(trunk) + text_part).chunk(2, dim=-1)  # (..., H) each
        gate = torch.sigmoid(self.gate_out(F.gelu(gate)))
        return gate * self.mlp_out(F.gelu(mlp)) + (1 - gate) * self.skip(trunk)


@register_conditioning("token")
class TokenConditioning(Conditioning):
    """The text embedding, projected to the ViT's width, enters the image tower as an extra
    input token after the class token; the class token's output, through a linear head, is
    the conditioned embedding.

    It needs a timm ``VisionTransformer`` image tower (``timm:vit_*`` from the registry),
    handed over with :meth:`attach`. A frozen tower stays frozen: the gradient flows through
    it into the token projection and the head only.

    Args:
        image_dim: the tower's ``num_features`` (its width).
        text_dim: ``E``.
        out_dim: ``D``.
    """

    pairwise_negatives = False
    takes_images = True

    def __init__(self, image_dim: int, text_dim: int, out_dim: int) -> None:
        super().__init__()
        self.to_token = nn.Linear(text_dim, image_dim)
        self.head = nn.Linear(image_dim, out_dim)
        self._tower: list[nn.Module] = []  # a list: the tower is the method's, not saved twice

    def attach(self, tower: nn.Module) -> TokenConditioning:
        """Use ``tower`` (a timm VisionTransformer) as the image tower."""
        needed = ("patch_embed", "_pos_embed", "blocks", "norm")
        missing = [name for name in needed if not hasattr(tower, name)]
        if missing or getattr(tower, "cls_token", None) is None:
            raise ValueError(
                "token conditioning needs a timm VisionTransformer with a class token as the "
                f"image tower (e.g. 'timm:vit_tiny_patch16_224'), got {type(tower).__name__}"
            )
        self._tower = [tower]
        return self

    def forward(self, images: Tensor, text: Tensor) -> Tensor:
        if not self._tower:
            raise RuntimeError("call attach(tower) before using token conditioning")
        vit = self._tower[0]
        x = vit._pos_embed(vit.patch_embed(images))  # (B, 1 + P, W): class token first
        token = self.to_token(text).to(x.dtype)[:, None]  # (B, 1, W)
        x = torch.cat([x[:, :1], token, x[:, 1:]], dim=1)  # (B, 2 + P, W)
        x = vit.norm(vit.blocks(vit.norm_pre(x) if hasattr(vit, "norm_pre") else x))
        return self.head(x[:, 0])  # (B, D)

    def pairwise(self, features: Tensor, text: Tensor) -> Tensor:
        n = len(text)
        m = len(features)
        images = features[None].expand(n, *features.shape).flatten(0, 1)  # (N * M, C, H, W)
        return self(images, text.repeat_interleave(m, dim=0)).unflatten(0, (n, m))


__all__ = [
    "Combiner",
    "Conditioning",
    "FiLM",
    "HeadConditioning",
    "Project",
    "TokenConditioning",
    "create_conditioning",
    "list_conditionings",
    "register_conditioning",
]
