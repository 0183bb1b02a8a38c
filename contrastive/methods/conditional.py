"""Text-conditioned similarity: embeddings in which images are close in the respect a text names."""

from __future__ import annotations

from collections import defaultdict
from contextvars import ContextVar
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastive import distributed
from contrastive.backbones import load_weights
from contrastive.checkpoints import CheckpointError
from contrastive.conditional_eval import (
    SCORERS,
    ConditionalModel,
    ConditionSpec,
    conditional_benchmark,
    conditional_report,
    distinct_texts,
)
from contrastive.conditioning import create_conditioning
from contrastive.methods.base import ContrastiveMethod
from contrastive.text import TextCache, TextTower, freeze, keep_frozen_eval

_RESTORING: ContextVar[bool] = ContextVar("restoring_from_checkpoint", default=False)


class Conditional(ContrastiveMethod):
    """Learns in what respect two images are alike from (image, image, text) triplets, after
    FocalLens-like conditional embeddings (Hsieh et al. 2025, arXiv:2504.08368) and Conditional
    Similarity Networks (Veit et al. 2017, arXiv:1603.07810).

    The image tower (``backbone`` plus ``image_projection``) and the text tower (``text_tower``
    plus ``text_projection``) are frozen by default and come from a CLIP or LiT checkpoint
    (``towers``); only a small conditioning module (``conditioning``, see
    :mod:`contrastive.conditioning`) trains. The loss is InfoNCE between the conditioned
    embeddings of each pair; for the head mechanisms every negative is conditioned on the
    anchor's own text, and the data's hard negatives (alike in all but the named respect) join
    the candidates. Candidates are gathered across ranks.

    ``embed(images)`` is the unconditioned image embedding; ``embed(images, texts)`` the
    conditioned one. Validation and ``contrastive test`` run the conditional benchmark
    (:mod:`contrastive.conditional_eval`) against the unconditioned, text-only and image+text
    baselines on a labelled split, and triplet accuracy on a data module's triplets.

    Args:
        text_tower: the text tower, as in :class:`~contrastive.methods.CLIP`.
        conditioning: ``project``, ``film``, ``combiner`` or ``token``.
        conditioning_kwargs: the mechanism's own arguments (``hidden_dim``).
        embed_dim: width of the conditioned embedding.
        towers: a CLIP checkpoint (or a run folder: its newest ``*/checkpoints/last.ckpt``)
            whose ``backbone``, ``image_projection``, ``text_tower`` and ``text_projection``
            weights are loaded; ``backbone`` and ``text_tower`` must describe the same
            architectures. ``None``: the towers as built (random or pretrained).
        image_embed_dim: width of the image projection (the CLIP embedding), needed without a
            ``text_projection``-free checkpoint to read it from; ``None`` takes the text
            tower's width (LiT).
        text_projection: the towers have a text projection (CLIP) or none (LiT).
        freeze_image_tower: no gradient into the backbone and image projection.
        freeze_text_tower: no gradient into the text tower and its projection; then each
            distinct text's tower output is cached.
        temperature: InfoNCE temperature.
        symmetric: average the loss over both directions of each pair.
        hard_negatives: use the batch's ``negative`` images as extra candidates.
        eval_queries: queries of the conditional benchmark (the first of the labelled split).
        text_cache_size: distinct texts remembered with a frozen text tower.
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
        eval_queries: int = 512,
        text_cache_size: int = 100_000,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        width = image_embed_dim or text_tower.num_features
        self.text_tower = text_tower
        self.image_projection = nn.Linear(self.backbone.num_features, width, bias=False)
        self.text_projection = (
            nn.Linear(text_tower.num_features, width, bias=False)
            if text_projection
            else nn.Identity()
        )
        if not text_projection and width != text_tower.num_features:
            raise ValueError(
                f"without text_projection, image_embed_dim ({width}) must equal the text "
                f"tower's num_features ({text_tower.num_features})"
            )
        if towers is not None and not _RESTORING.get():  # a checkpoint holds its own towers
            self.load_towers(towers)
        for frozen, modules in (
            (freeze_image_tower, (self.backbone, self.image_projection)),
            (freeze_text_tower, (self.text_tower, self.text_projection)),
        ):
            for module in modules if frozen else ():
                freeze(module)
        self.conditioning = create_conditioning(
            conditioning,
            image_dim=self.backbone.num_features,
            text_dim=width,
            out_dim=embed_dim,
            **(conditioning_kwargs or {}),
        )
        if self.conditioning.takes_images:
            self.conditioning.attach(self.backbone)
        self.freeze_image_tower, self.freeze_text_tower = freeze_image_tower, freeze_text_tower
        self.temperature, self.symmetric = temperature, symmetric
        self.hard_negatives, self.eval_queries = hard_negatives, eval_queries
        self._text_cache = TextCache(text_cache_size if freeze_text_tower else 0)
        self._reset_eval()

    @classmethod
    def load_from_checkpoint(cls, *args, **kwargs) -> Conditional:
        """Lightning's, without reading ``towers`` again: the checkpoint has their weights."""
        token = _RESTORING.set(True)
        try:
            return super().load_from_checkpoint(*args, **kwargs)
        finally:
            _RESTORING.reset(token)

    def load_towers(self, path: str) -> None:
        """Load both towers (and their projections) from a CLIP checkpoint or run folder."""
        checkpoint = resolve_checkpoint(path)
        for prefix in ("backbone", "image_projection", "text_tower", "text_projection"):
            module = getattr(self, prefix)
            if list(module.state_dict()):
                load_weights(module, checkpoint, f"{prefix}.", f"this model's {prefix}")

    def train(self, mode: bool = True) -> Conditional:
        super().train(mode)
        keep_frozen_eval(
            (self.freeze_image_tower, self.backbone), (self.freeze_text_tower, self.text_tower)
        )
        return self

    # ---- the towers -------------------------------------------------------------------------

    def make_views(self, batch: dict) -> list[Tensor]:
        """The anchor, the positive (``view``) and, when present, the hard ``negative``."""
        keys = ["image", "view"] + (["negative"] if self._use_negatives(batch) else [])
        return [self._memory_format(self.augment(batch[k])) for k in keys]

    def _use_negatives(self, batch: dict) -> bool:
        return self.hard_negatives and "negative" in batch

    def features(self, views: Tensor) -> Tensor:
        """Normalised images ``(B, C, H, W)`` -> the image tower's features ``(B, F)``."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_image_tower):
            return self.backbone(views)

    def represent(self, views: Tensor) -> Tensor:
        """The unconditioned image embedding ``(B, E)``, in the text tower's space."""
        return self.image_projection(self.features(views))

    def inputs(self, views: Tensor) -> Tensor:
        """What the conditioning takes: tower features, or the images themselves (token)."""
        return views if self.conditioning.takes_images else self.features(views)

    def encode_text(self, texts: list[str]) -> Tensor:
        """Texts -> unit embeddings ``(len(texts), E)`` in the image embedding's space."""
        table, index = self.encode_distinct(texts)
        return table[index]

    def encode_distinct(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """The distinct texts' unit embeddings ``(U, E)``, and each text's row ``(len(texts),)``.

        Conditions repeat (a few phrasings per attribute), so each distinct text is embedded
        once per batch, and once ever with a frozen tower (the cache).
        """
        unique, index = distinct_texts(texts)

        def compute(missing: list[int]) -> Tensor:  # (k, T), rows of unique not cached
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_text_tower):
                return self.text_tower.encode([unique[i] for i in missing])

        table = self._text_cache(unique, compute)  # (U, T)
        return F.normalize(self.text_projection(table), dim=-1), index.to(table.device)

    def condition(self, inputs: Tensor, text: Tensor) -> Tensor:
        """Unit conditioned embeddings ``(B, D)`` of ``inputs`` row by row under ``text``."""
        return F.normalize(self.conditioning(inputs, text), dim=-1)

    def embed(self, images: Tensor, texts: list[str] | str | None = None) -> Tensor:
        """Unconditioned ``(B, E)`` embeddings of uint8 (or [0, 1] float) images, or with
        ``texts`` (one per image, or one for all) the unit conditioned ones ``(B, D)``."""
        views = self._memory_format(self.augment.normalize(images))
        if texts is None:
            return self.represent(views)
        texts = [texts] * len(images) if isinstance(texts, str) else list(texts)
        if len(texts) != len(images):
            raise ValueError(f"expected one text per image, got {len(texts)} for {len(images)}")
        return self.condition(self.inputs(views), self.encode_text(texts))

    # ---- training ---------------------------------------------------------------------------

    def training_loss(self, batch: dict) -> Tensor:
        anchor, positive, *negative = (self.inputs(v) for v in batch["views"])
        text = self.encode_distinct(list(batch["text"]))  # (U, E) and (N,)
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
        """InfoNCE of each query against the gathered keys (and negatives), under its text.

        ``text`` is the distinct texts' embeddings ``(U, E)`` and each row's index ``(N,)``.
        """
        distinct, index = text
        text = distinct[index]  # (N, E)
        q = self.condition(queries, text)  # (N, D)
        if self.conditioning.pairwise_negatives:
            # Every candidate under every anchor's own text, once per distinct text.
            candidates, _, positions = self.gather(torch.cat([keys, *negatives]))
            k = F.normalize(self.conditioning.pairwise(candidates, distinct), dim=-1)  # (U, M, D)
            logits = torch.einsum("nd,nmd->nm", q, k[index])  # (N, M)
        else:  # each candidate under its own row's text
            own = self.condition(torch.cat([keys, *negatives]), text.repeat(1 + len(negatives), 1))
            k, _, positions = self.gather(own)
            logits = q @ k.T
        if negatives:  # a row without a negative has a placeholder image: masked out
            valid = torch.cat([torch.ones_like(has_negative), has_negative])  # (2N,) local
            if self.gather_negatives and distributed.is_distributed():
                valid = distributed.gather_no_grad(valid.to(torch.uint8)).bool()  # (M,)
            logits = logits.masked_fill(~valid, float("-inf"))
        # Each rank's block is [keys, negatives]: the positives are the first len(keys) rows.
        return F.cross_entropy(logits / self.temperature, positions[: len(keys)])

    # ---- evaluation -------------------------------------------------------------------------

    def _reset_eval(self) -> None:
        self._eval_store: dict[str, list] = defaultdict(list)
        self._triplet_counts: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])

    def _conditional_eval_step(self, batch: dict, dataloader_idx: int, random_init) -> None:
        features = self._eval_step(batch, dataloader_idx, random_init)
        if features is None:
            return
        views = self._memory_format(self.augment.normalize(batch["image"]))
        if "labels" in batch:
            self._eval_store["inputs"].append(self.inputs(views))
            self._eval_store["embeddings"].append(features["trained"])
            self._eval_store["labels"].append(self._labels(batch))
        if "text" in batch and "negative" in batch:
            self._triplet_step(batch, views, features["trained"])

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._conditional_eval_step(batch, dataloader_idx, random_init=None)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._conditional_eval_step(batch, dataloader_idx, self._random_backbone[0])

    def _triplet_step(self, batch: dict, anchor_views: Tensor, anchor: Tensor) -> None:
        """Count, per condition and scorer, triplets whose positive outscores the negative."""
        keep = batch["has_negative"].bool()
        normalize = self.augment.normalize
        pos_views, neg_views = (
            self._memory_format(normalize(batch[k])) for k in ("view", "negative")
        )
        text = self.encode_text(list(batch["text"]))
        image = [
            F.normalize(e, dim=-1)
            for e in (anchor, self.represent(pos_views), self.represent(neg_views))
        ]
        cond = [self.condition(self.inputs(v), text) for v in (anchor_views, pos_views, neg_views)]
        queries = {
            "conditioned": (cond[0], cond[1], cond[2]),
            "image": image,
            "text": (text, image[1], image[2]),
            "image+text": (F.normalize(image[0] + text, dim=-1), image[1], image[2]),
        }
        for scorer, (q, p, n) in queries.items():
            correct = ((q * p).sum(-1) > (q * n).sum(-1))[keep]
            for condition, ok in zip(
                [c for c, k in zip(batch["condition"], keep.tolist(), strict=True) if k],
                correct.tolist(),
                strict=True,
            ):
                counts = self._triplet_counts[(condition, scorer)]
                counts[0] += ok
                counts[1] += 1

    def _conditional_results(self) -> dict[tuple[str, str, str], dict[str, float]]:
        results: dict[tuple[str, str, str], dict[str, float]] = {}
        datamodule = getattr(self.trainer, "datamodule", None)
        phrasings = getattr(datamodule, "phrasings", None)
        if self._eval_store["labels"] and phrasings:
            store = {
                k: distributed.gather_no_grad(torch.cat(v)) for k, v in self._eval_store.items()
            }
            names = list(self.eval_num_classes)
            labels = {name: store["labels"][:, i] for i, name in enumerate(names)}
            specs = [
                ConditionSpec(c, group, tuple(templates), tuple(datamodule.class_names[c]))
                for c in datamodule.conditions
                for group, templates in phrasings[c].items()
            ]
            model = ConditionalModel(
                condition=self.condition,
                condition_gallery=lambda x, t: self.condition(x, t.expand(len(x), -1)),
                embed_text=self.encode_text,
            )
            results = conditional_benchmark(
                model, store["inputs"], store["embeddings"], labels, specs, self.eval_queries
            )
            self._benchmark_size = (
                len(store["embeddings"]),
                min(self.eval_queries, len(store["embeddings"])),
            )
        for (condition, scorer), (correct, total) in self._triplet_counts.items():
            results.setdefault((condition, "triplets", scorer), {})["triplet"] = correct / total
        self._reset_eval()
        return results

    def _log_conditional(self, stage: str) -> dict:
        results = self._conditional_results()
        flat = {
            f"{stage}/conditional/{c}/{p}/{s}/{metric}": value
            for (c, p, s), metrics in results.items()
            for metric, value in metrics.items()
        }
        self.log_dict(flat)
        return results

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_conditional("val")

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        results = self._log_conditional("test")
        if self.trainer.is_global_zero and results:
            gallery, queries = getattr(self, "_benchmark_size", (0, 0))
            print(conditional_report(results, gallery, queries))


def resolve_checkpoint(path: str) -> Path:
    """A checkpoint file, or a run folder's newest ``**/checkpoints/last.ckpt``.

    Raises:
        CheckpointError: one line naming ``towers`` and the path.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        found = sorted(p.glob("**/checkpoints/last.ckpt"), key=lambda f: f.stat().st_mtime)
        if not found:
            raise CheckpointError(f"towers: no checkpoints/last.ckpt under the folder {path}")
        return found[-1]
    if not p.is_file():
        raise CheckpointError(f"towers: no checkpoint file at {path}")
    return p


__all__ = ["SCORERS", "Conditional", "resolve_checkpoint"]
