"""Text-conditioned similarity: embeddings in which images are close in the respect a text names."""

from __future__ import annotations

from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastive import distributed
from contrastive.conditioning import create_conditioning
from contrastive.methods.towers import TwoTowerMethod
from contrastive.text import TextTower, distinct_texts, projections

_RESTORING: ContextVar[bool] = ContextVar("restoring_from_checkpoint", default=False)


class Conditional(TwoTowerMethod):
    """Learns in what respect two images are alike from (image, image, text) triplets, after
    FocalLens-like conditional embeddings (Hsieh et al. 2025, arXiv:2504.08368) and Conditional
    Similarity Networks (Veit et al. 2017, arXiv:1603.07810).

    The image tower (``backbone``, ``image_projection``) and the text tower (``text_tower``,
    ``text_projection``) come frozen from a CLIP or LiT checkpoint (``towers``); a small
    conditioning module (:mod:`contrastive.conditioning`) trains, by InfoNCE between the
    conditioned embeddings of each pair, every negative under the anchor's own text (head
    mechanisms), the data's hard negatives included, gathered across ranks.

    ``embed(images)`` (= ``encode_image``) is the unconditioned image embedding and
    ``condition(images, texts)`` the conditioned one; the conditional benchmark runs its two
    halves, ``condition_inputs`` and ``condition_from``, apart: the towers once per image.

    Args:
        text_tower: the text tower, as in :class:`~contrastive.methods.CLIP`.
        conditioning: ``project``, ``film``, ``combiner`` or ``token``.
        conditioning_kwargs: the mechanism's own arguments (``hidden_dim``).
        embed_dim: width of the conditioned embedding.
        towers: a CLIP checkpoint (or a run folder: its newest ``*/checkpoints/last.ckpt``)
            whose ``backbone``, ``image_projection``, ``text_tower`` and ``text_projection`` are
            loaded (the same architectures). ``None``: the towers as built.
        image_embed_dim: width of the image projection (the CLIP embedding); ``None`` takes the
            text tower's width (LiT).
        text_projection: the towers have a text projection (CLIP) or none (LiT).
        freeze_image_tower, freeze_text_tower: no gradient into the backbone, the text tower,
            and their projections; with a frozen text tower each text's output is cached.
        temperature: InfoNCE temperature.
        symmetric: average the loss over both directions of each pair.
        hard_negatives: use the batch's ``negative`` images as extra candidates.
        condition_on_text: ``False``: the matched-budget control, the same head trained on the
            same triplets with zero for text: one embedding for all, with as many parameters.
        **kwargs: :class:`ContrastiveMethod` arguments (``backbone``, ``augment``, ...).
    """

    def __init__(
        self,
        text_tower: TextTower,
        conditioning: str = "project",
        conditioning_kwargs: dict | None = None,
        embed_dim: int = 64,
        towers: str | None = None,
        image_embed_dim: int | None = None,
        text_projection: bool = False,
        freeze_image_tower: bool = True,
        freeze_text_tower: bool = True,
        temperature: float = 0.1,
        symmetric: bool = True,
        hard_negatives: bool = True,
        text_cache_size: int = 100_000,
        condition_on_text: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(
            text_tower, freeze_image_tower, freeze_text_tower, text_cache_size, **kwargs
        )
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        width = image_embed_dim or text_tower.num_features
        self.image_projection, self.text_projection = projections(
            self.backbone.num_features, text_tower, width, text_projection, "image_embed_dim"
        )
        if towers is not None and not _RESTORING.get():  # a checkpoint holds its own towers
            self.load_towers(towers)
        self.freeze_towers(with_projections=True)
        dims = {"image_dim": self.backbone.num_features, "text_dim": width, "out_dim": embed_dim}
        self.conditioning = create_conditioning(conditioning, **dims, **(conditioning_kwargs or {}))
        if self.conditioning.takes_images:
            self.conditioning.attach(self.backbone)
        self.temperature, self.symmetric = temperature, symmetric
        self.hard_negatives, self.condition_on_text = hard_negatives, condition_on_text

    @classmethod
    def load_from_checkpoint(cls, *args, **kwargs) -> Conditional:
        """Lightning's, without reading ``towers`` again: the checkpoint has their weights."""
        token = _RESTORING.set(True)
        try:
            return super().load_from_checkpoint(*args, **kwargs)
        finally:
            _RESTORING.reset(token)

    def make_views(self, batch: dict) -> list[Tensor]:
        """The anchor, the positive (``view``) and, when present, the hard ``negative``."""
        negative = ["negative"] if self.hard_negatives and "negative" in batch else []
        return [self._memory_format(self.augment(batch[k])) for k in ["image", "view", *negative]]

    def _inputs(self, views: Tensor) -> Tensor:  # what the conditioning reads, of normalised images
        return views if self.conditioning.takes_images else self._features(views)

    def embed(self, images: Tensor) -> Tensor:  # the unconditioned image embedding
        return self.encode_image(images)

    def encode_text(self, texts: list[str]) -> Tensor:
        """Texts -> unit embeddings ``(len(texts), E)`` in the image embedding's space."""
        table, index = self.encode_distinct(texts)
        return table[index]

    def encode_distinct(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """The distinct texts' unit embeddings ``(U, E)`` and each text's row ``(len(texts),)``:
        a condition is embedded once per batch, and once ever with a frozen tower (the cache)."""
        unique, index = distinct_texts(texts)

        def compute(missing: list[int]) -> Tensor:  # (k, T), rows of unique not cached
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_text_tower):
                return self.text_tower.encode([unique[i] for i in missing])

        table = self._text_cache(unique, compute)  # (U, T)
        return F.normalize(self.text_projection(table), dim=-1), index.to(table.device)

    def condition_inputs(self, images: Tensor) -> Tensor:
        """uint8 images -> what the conditioning reads: tower features, or the normalised images
        themselves (``token``); computed once, then conditioned under any text."""
        return self._inputs(self._views(images))

    def condition_from(self, inputs: Tensor, text: Tensor) -> Tensor:
        """Unit conditioned embeddings ``(B, D)`` of :meth:`condition_inputs` under ``(B, E)``
        text embeddings (:meth:`encode_text`), row by row (zeros without
        ``condition_on_text``)."""
        if not self.condition_on_text:
            text = torch.zeros_like(text)
        return F.normalize(self.conditioning(inputs, text), dim=-1)

    def condition(self, images: Tensor, texts: list[str] | str) -> Tensor:
        """Unit conditioned ``(B, D)`` of uint8 images under texts (one per image, or one)."""
        texts = [texts] * len(images) if isinstance(texts, str) else list(texts)
        if len(texts) != len(images):
            raise ValueError(f"expected one text per image, got {len(texts)} for {len(images)}")
        return self.condition_from(self.condition_inputs(images), self.encode_text(texts))

    # ---- training ---------------------------------------------------------------------------

    def training_loss(self, batch: dict) -> Tensor:
        anchor, positive, *negative = (self._inputs(v) for v in batch["views"])
        if self.condition_on_text:
            text = self.encode_distinct(list(batch["text"]))  # (U, E) and (N,)
        else:  # one zero "text" for every row: the text tower is never run
            width = self.image_projection.out_features
            rows = torch.zeros(len(anchor), dtype=torch.long, device=anchor.device)
            text = (anchor.new_zeros(1, width), rows)
        has_negative = batch["has_negative"].bool() if negative else None
        loss = self._info_nce(anchor, positive, text, negative, has_negative)
        if self.symmetric:
            loss = (loss + self._info_nce(positive, anchor, text, negative, has_negative)) / 2
        return loss

    def _info_nce(
        self,
        queries: Tensor,
        keys: Tensor,
        text: tuple[Tensor, Tensor],
        negatives: list[Tensor],
        has_negative: Tensor | None,
    ) -> Tensor:
        """InfoNCE of each query against the gathered keys (and negatives), under its text:
        ``text`` is the distinct texts' embeddings ``(U, E)`` and each row's index ``(N,)``."""
        distinct, index = text
        text = distinct[index]  # (N, E)
        q = self.condition_from(queries, text)  # (N, D)
        candidates = torch.cat([keys, *negatives])  # (N + N', ...)
        if self.conditioning.pairwise_negatives:
            # Every candidate under every anchor's own text, once per distinct text.
            candidates, _, positions = self.gather(candidates)
            k = F.normalize(self.conditioning.pairwise(candidates, distinct), dim=-1)  # (U, M, D)
            logits = torch.einsum("nd,nmd->nm", q, k[index])  # (N, M)
        else:  # each candidate under its own row's text
            own = self.condition_from(candidates, text.repeat(1 + len(negatives), 1))
            k, _, positions = self.gather(own)
            logits = q @ k.T
        if negatives:  # a row without a negative has a placeholder image: masked out
            valid = torch.cat([torch.ones_like(has_negative), has_negative])  # (2N,) local
            if self.gather_negatives and distributed.is_distributed():
                valid = distributed.gather_no_grad(valid.to(torch.uint8)).bool()  # (M,)
            logits = logits.masked_fill(~valid, float("-inf"))
        # Each rank's block is [keys, negatives]: the positives are the first len(keys) rows.
        return F.cross_entropy(logits / self.temperature, positions[: len(keys)])


__all__ = ["Conditional"]
