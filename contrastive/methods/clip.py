"""CLIP: contrastive image-text pre-training, and its SigLIP and LiT variants."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from contrastive.gradcache import Embeddings, by_sample, by_view
from contrastive.heads import ProjectionHead
from contrastive.losses import Tiling, clip_loss, siglip_loss
from contrastive.methods.towers import TwoTowerMethod, scale_gradient
from contrastive.queue import EmbeddingQueue
from contrastive.text import TextTower, joint_space, tokens_to


class CLIP(TwoTowerMethod):
    """CLIP (Radford et al. 2021, arXiv:2103.00020): an image and a text tower whose embeddings
    meet; each image is pulled to its caption and pushed from every other caption of the global
    batch. ``loss="siglip"`` gives SigLIP (Zhai et al. 2023, arXiv:2303.15343); a frozen
    pretrained text tower with a trained image tower gives LiT (Zhai et al. 2022,
    arXiv:2111.07991).

    ``embed(images)`` is the backbone's features; ``encode_image`` and ``encode_text`` the
    towers' embeddings in the shared space (zero-shot and retrieval read them). Towers from one
    pretrained open_clip model keep its projections and logit scale (``joint_space``).

    Args:
        text_tower: the text tower (:class:`~contrastive.methods.towers.TwoTowerMethod`).
        embed_dim: the shared embedding width; ``None`` keeps the text tower's width.
        text_projection: a linear projection after the text tower. Without it (LiT's locked
            tower) the image tower projects straight into the text tower's space.
        freeze_image_tower, freeze_text_tower: no gradient into ``backbone``, into
            ``text_tower`` (their projections still train); a frozen tower runs without a graph.
        loss: ``"clip"`` (symmetric softmax cross-entropy) or ``"siglip"`` (pairwise sigmoid).
        init_temperature: initial ``1 / logit_scale``: 0.07 for CLIP, 0.1 for SigLIP by default.
        learn_temperature: learn the logit scale (a float32 parameter without weight decay).
        max_logit_scale: the logit scale is clamped to at most this (100 in CLIP).
        init_logit_bias: SigLIP's initial bias (-10 in the paper).
        tiled, tile_size: the CLIP loss in tiles of this many rows and columns (memory linear
            in the global batch); ``tile_above``: tiled when the global batch is larger.
        ssl_weight: weight of SLIP's image self-supervision (Mu et al. 2022, arXiv:2112.12750):
            NT-Xent between two views of each image through its own projection head.
        ssl_temperature, ssl_projector_dim: its NT-Xent temperature and head width (hidden 512).
        queue_size: the last this many image and text embeddings (every rank's) kept as extra
            negatives, MoCo-style (``queue.py``), for ``loss="clip"``'s pairs only. 0: none.
        caption_grad_scale: multiplies the image-text loss's gradient into ``backbone`` (the
            projection gets it whole). 1: CLIP; 0: the backbone learns from SLIP's loss alone;
            0.1 let the image loss lead on the shapes data while captions kept colour.
        **kwargs: :class:`ContrastiveMethod` arguments (``chunk_size``: with gradient caching,
            chunks of pairs, both towers re-run).
    """

    def __init__(
        self,
        text_tower: TextTower,
        embed_dim: int | None = 256,
        text_projection: bool = True,
        freeze_image_tower: bool = False,
        freeze_text_tower: bool = False,
        loss: Literal["clip", "siglip"] = "clip",
        init_temperature: float | None = None,
        learn_temperature: bool = True,
        max_logit_scale: float = 100.0,
        init_logit_bias: float = -10.0,
        tiled: bool = False,
        tile_size: int = 1024,
        tile_above: int | None = 8192,
        text_cache_size: int = 100_000,
        ssl_weight: float = 0.0,
        ssl_temperature: float = 0.1,
        ssl_projector_dim: int = 128,
        queue_size: int = 0,
        caption_grad_scale: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(
            text_tower, freeze_image_tower, freeze_text_tower, text_cache_size, **kwargs
        )
        if loss not in ("clip", "siglip"):
            raise ValueError(f"loss must be 'clip' or 'siglip', got '{loss}'")
        if queue_size < 0:
            raise ValueError(f"queue_size must be >= 0 (0: no queue), got {queue_size}")
        if caption_grad_scale < 0:
            raise ValueError(f"caption_grad_scale must be >= 0, got {caption_grad_scale}")
        if queue_size and loss != "clip":
            raise ValueError(f"queue_size needs loss='clip' (SigLIP takes no queue), got '{loss}'")
        self.image_projection, self.text_projection, log_scale, bias = joint_space(
            self.backbone, text_tower, embed_dim, text_projection, init_temperature
        )
        init_temperature = init_temperature or {"clip": 0.07, "siglip": 0.1}[loss]
        if not 0 < 1 / init_temperature <= max_logit_scale:
            raise ValueError(
                f"1 / init_temperature must be in (0, max_logit_scale={max_logit_scale}], got "
                f"init_temperature={init_temperature}"
            )
        embed_dim = embed_dim or text_tower.num_features
        self.freeze_towers(with_projections=False)
        log_scale = torch.tensor(math.log(1 / init_temperature) if log_scale is None else log_scale)
        if learn_temperature:
            self.log_logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale)
        if loss == "siglip":
            bias = init_logit_bias if bias is None else bias  # a pretrained SigLIP's own
            self.logit_bias = nn.Parameter(torch.tensor(float(bias)))
        self.loss, self.max_logit_scale = loss, max_logit_scale
        self.tiling = Tiling(tiled, tile_size, tile_above)
        self.ssl_weight, self.ssl_temperature = ssl_weight, ssl_temperature
        if ssl_weight > 0:
            self.ssl_projector = ProjectionHead(self.backbone.num_features, 512, ssl_projector_dim)
        self.caption_grad_scale = caption_grad_scale
        self.image_queue = EmbeddingQueue(queue_size, embed_dim) if queue_size else None
        self.text_queue = EmbeddingQueue(queue_size, embed_dim) if queue_size else None

    @property
    def tokenizer(self):
        return self.text_tower.tokenizer

    def make_views(self, batch: dict) -> list[Tensor]:
        """Each image augmented; a second view of the generator's ``view`` or, for SLIP, itself."""
        sources = [batch["image"]]
        if "view" in batch or self.ssl_weight > 0:
            sources.append(batch.get("view", batch["image"]))
        return [self._memory_format(self.augment(s)) for s in sources]

    def encode_text(self, texts: list[str], tokens: Any = None) -> Tensor:
        """Captions -> ``(B, E)`` (not unit-norm); ``tokens``: the loader workers' tokens."""
        if tokens is None:
            tokens = tokens_to(self.tokenizer(list(texts)), self.device)
        if self._text_cache.size > 0:
            features = self._text_features(list(texts), tokens)
            return self.text_projection(features)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_text_tower):
            return self.text_projection(self.text_tower(tokens))

    def logit_scale(self) -> Tensor:
        """``exp`` of the learnt log-scale, clamped to ``max_logit_scale``, in float32."""
        # float32 even under bf16 autocast: exp() of a value near 4.6 loses ~2 digits in bf16.
        log_scale = self.log_logit_scale.float().clamp(max=math.log(self.max_logit_scale))
        return log_scale.exp()

    def training_embeddings(self, batch: dict) -> Embeddings:
        """``{"image", "text": (B, V, E)}``, V = 2 when a generator view has its own caption, and
        for SLIP ``"features": (B, 2, F)`` (its projector runs in the loss, on the whole batch)."""
        b = len(batch["views"][0])
        features = self._features(torch.cat(batch["views"]))  # (B, F) or (2B, F)
        texts = self.encode_text(batch["caption"], batch.get("tokens"))  # (B, E)
        if "view_caption" in batch and len(features) == 2 * b:  # views are pairs of their own
            view_texts = self.encode_text(batch["view_caption"], batch.get("view_tokens"))
            texts = torch.cat([texts, view_texts])  # (2B, E)
        paired = scale_gradient(features[: len(texts)], self.caption_grad_scale)
        images = self.image_projection(paired)  # (B or 2B, E)
        embeddings = {"image": by_sample(images, b), "text": by_sample(texts, b)}
        if self.ssl_weight > 0:
            embeddings["features"] = by_sample(features, b)  # (B, 2, F)
        return embeddings

    def loss_from_embeddings(self, embeddings: Embeddings, batch: dict) -> Tensor:
        """The image-text loss over the global batch, plus SLIP's image loss when weighted."""
        images, texts = by_view(embeddings["image"]), by_view(embeddings["text"])  # (VB, E)
        loss = self._image_text_loss(images, texts)
        if self.ssl_weight > 0:
            features = embeddings["features"]  # (B, 2, F)
            image_loss = self._image_loss(by_view(features), len(features))
            self.log_dict(  # the two parts apart: which of them is learning
                {"train/image_text_loss": loss, "train/ssl_loss": image_loss},
                batch_size=len(features),
            )
            loss = loss + self.ssl_weight * image_loss
        return loss

    def _image_loss(self, features: Tensor, b: int) -> Tensor:
        """SLIP's image self-supervision: NT-Xent between the two views of each image."""
        ids = self.global_ids(b).repeat(2)  # (2B,) image ids, shared by the two views
        return self.info_nce(self.ssl_projector(features), ids, self.ssl_temperature)

    def _image_text_loss(self, images: Tensor, texts: Tensor) -> Tensor:
        all_texts, _, positions = self.gather(texts)  # (M, E)
        scale = self.logit_scale()
        self.log("train/logit_scale", scale, batch_size=len(images))
        if self.loss == "siglip":
            return siglip_loss(images, all_texts, positions, scale, self.logit_bias.float())
        all_images, _, _ = self.gather(images)  # (M, E)
        queued = []  # the image queue's and the text queue's (K, E) rows
        if self.image_queue is not None:
            queued = [self.image_queue.negatives(), self.text_queue.negatives()]
        block = self.tiling.block_size(len(all_images) + sum(len(q) for q in queued[:1]))
        loss = clip_loss(images, texts, all_images, all_texts, positions, scale, block, *queued)
        if self.image_queue is not None:  # after the loss: this batch is no negative of itself
            self.image_queue.push(all_images)
            self.text_queue.push(all_texts)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():  # as CLIP does after each step: the parameter itself stays bounded
            self.log_logit_scale.clamp_(max=math.log(self.max_logit_scale))
