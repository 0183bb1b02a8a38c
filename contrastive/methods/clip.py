"""CLIP: contrastive image-text pre-training, and its SigLIP and LiT variants."""

from __future__ import annotations

import copy
import math
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from contrastive.crossmodal import CrossModalRetrieval, text_ids, zero_shot_logits
from contrastive.crossmodal import zero_shot_weights as make_zero_shot_weights
from contrastive.datamodules.common import DataError
from contrastive.gradcache import Embeddings, by_sample, by_view
from contrastive.heads import ProjectionHead
from contrastive.losses import Tiling, clip_loss, siglip_loss
from contrastive.methods.base import ContrastiveMethod
from contrastive.queue import EmbeddingQueue
from contrastive.text import TextCache, TextTower, freeze, keep_frozen_eval

DEFAULT_PROMPTS = ("a photo of a {}.",)


class Towers(NamedTuple):
    """The two heads of an evaluation run: backbone features -> ``(B, E)``, a batch of
    captions -> ``(B, E)``, and whose backbone features (``"trained"`` or ``"random"``)."""

    image: Any
    text: Any
    features: str


class CLIP(ContrastiveMethod):
    """CLIP (Radford et al. 2021, arXiv:2103.00020): an image and a text tower whose embeddings
    meet; each image is pulled to its caption and pushed from every other caption of the global
    batch. ``loss="siglip"`` gives SigLIP (Zhai et al. 2023, arXiv:2303.15343); a frozen
    pretrained text tower with a trained image tower gives LiT (Zhai et al. 2022,
    arXiv:2111.07991).

    The image tower is ``backbone`` (from the registry) plus a linear projection to
    ``embed_dim``; the text tower is a :class:`~contrastive.text.TextTower` plus its own
    projection. Validation and ``contrastive test`` add zero-shot accuracy per attribute (from the
    data module's ``class_names`` and ``prompts``) and image-text retrieval to the base metrics.

    Args:
        text_tower: e.g. :class:`~contrastive.text.OpenCLIPText` or
            :class:`~contrastive.text.SentenceTransformerText`, by ``class_path`` in YAML.
        embed_dim: the shared embedding width; ``None`` keeps the text tower's width.
        text_projection: a linear projection after the text tower. Without it (LiT's locked
            tower) the image tower projects straight into the text tower's space.
        freeze_image_tower: no gradient into ``backbone`` (its projection still trains).
        freeze_text_tower: no gradient into the text tower (its projection still trains). Frozen
            towers stay in eval mode and run without a graph.
        loss: ``"clip"`` (symmetric softmax cross-entropy) or ``"siglip"`` (pairwise sigmoid).
        init_temperature: initial ``1 / logit_scale``: 0.07 for CLIP, 0.1 for SigLIP by default.
        learn_temperature: learn the logit scale (a float32 parameter without weight decay).
        max_logit_scale: the logit scale is clamped to at most this (100 in CLIP).
        init_logit_bias: SigLIP's initial bias (-10 in the paper).
        tiled: compute the CLIP loss tile by tile (memory linear in the global batch).
        tile_size: rows and columns per tile when ``tiled``.
        tile_above: tile automatically when the global batch has more pairs than this;
            ``None`` never does.
        prompts: zero-shot prompt templates per attribute, e.g. ``{"shape": ["a photo of a {}."]}``;
            only the attributes named are evaluated. ``None``: every attribute of the data module
            with ``"a photo of a {}."``.
        text_cache_size: with a frozen text tower, remember up to this many captions' tower
            outputs (a frozen tower always gives the same); 0 turns the cache off.
        retrieval_chunk_size: queries per chunk when ranking for retrieval.
        ssl_weight: weight of SLIP's image self-supervision (Mu et al. 2022,
            arXiv:2112.12750): NT-Xent between two views of each image (two augmentations, or
            the data's generator view), through its own projection head. It gives the image
            tower features the captions alone are slow to teach (shape, on the shapes data).
        ssl_temperature: its NT-Xent temperature.
        ssl_projector_dim: its projection head's output width (hidden: 512).
        queue_size: keep the last this many image and text embeddings (from every rank) as
            extra negatives, MoCo-style (``queue.py``): images are also classified against the
            queued texts and texts against the queued images; queued rows never match. The
            SLIP image loss gets no queue. Needs ``loss="clip"``. 0: no queue.
        caption_grad_scale: the image-text loss's gradient into ``backbone`` is multiplied by
            this (the image projection gets it whole). 1: CLIP. 0: the backbone learns from
            SLIP's image loss alone (and the captions train the projection on top, as LiT with
            the roles reversed). In between, the captions still keep what only they name (colour,
            on the shapes data) while the image loss leads: on the shapes data 0.1 let the
            backbone learn shape, where the whole caption gradient held it on colour
            (BENCHMARKS.md).
        **kwargs: :class:`ContrastiveMethod` arguments (backbone, augment, optimizer, and
            ``chunk_size``: with gradient caching, chunks of pairs, both towers re-run).
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
        prompts: dict[str, list[str]] | None = None,
        text_cache_size: int = 100_000,
        retrieval_chunk_size: int = 1024,
        ssl_weight: float = 0.0,
        ssl_temperature: float = 0.1,
        ssl_projector_dim: int = 128,
        queue_size: int = 0,
        caption_grad_scale: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if loss not in ("clip", "siglip"):
            raise ValueError(f"loss must be 'clip' or 'siglip', got '{loss}'")
        if queue_size < 0:
            raise ValueError(f"queue_size must be >= 0 (0: no queue), got {queue_size}")
        if caption_grad_scale < 0:
            raise ValueError(f"caption_grad_scale must be >= 0, got {caption_grad_scale}")
        if queue_size and loss != "clip":
            raise ValueError(f"queue_size needs loss='clip' (SigLIP takes no queue), got '{loss}'")
        init_temperature = init_temperature or {"clip": 0.07, "siglip": 0.1}[loss]
        if not 0 < 1 / init_temperature <= max_logit_scale:
            raise ValueError(
                f"1 / init_temperature must be in (0, max_logit_scale={max_logit_scale}], got "
                f"init_temperature={init_temperature}"
            )
        embed_dim = embed_dim or text_tower.num_features
        if not text_projection and embed_dim != text_tower.num_features:
            raise ValueError(
                f"without text_projection, embed_dim ({embed_dim}) must equal the text tower's "
                f"num_features ({text_tower.num_features})"
            )
        self.text_tower = freeze(text_tower) if freeze_text_tower else text_tower
        if freeze_image_tower:
            freeze(self.backbone)
        self.image_projection = nn.Linear(self.backbone.num_features, embed_dim, bias=False)
        self.text_projection = (
            nn.Linear(text_tower.num_features, embed_dim, bias=False)
            if text_projection
            else nn.Identity()
        )
        log_scale = torch.tensor(math.log(1 / init_temperature))
        if learn_temperature:
            self.log_logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale)
        if loss == "siglip":
            self.logit_bias = nn.Parameter(torch.tensor(float(init_logit_bias)))
        self.loss, self.max_logit_scale = loss, max_logit_scale
        self.freeze_image_tower, self.freeze_text_tower = freeze_image_tower, freeze_text_tower
        self.tiling = Tiling(tiled, tile_size, tile_above)
        self.prompts = prompts
        self.text_cache_size = text_cache_size if freeze_text_tower else 0
        self._text_cache = TextCache(self.text_cache_size)
        self.retrieval_chunk_size = retrieval_chunk_size
        self.ssl_weight, self.ssl_temperature = ssl_weight, ssl_temperature
        if ssl_weight > 0:
            self.ssl_projector = ProjectionHead(self.backbone.num_features, 512, ssl_projector_dim)
        self.caption_grad_scale = caption_grad_scale
        self.image_queue = EmbeddingQueue(queue_size, embed_dim) if queue_size else None
        self.text_queue = EmbeddingQueue(queue_size, embed_dim) if queue_size else None

    @property
    def tokenizer(self):
        return self.text_tower.tokenizer

    # ---- the two towers ---------------------------------------------------------------------

    def train(self, mode: bool = True) -> CLIP:
        super().train(mode)
        keep_frozen_eval(
            (self.freeze_image_tower, self.backbone), (self.freeze_text_tower, self.text_tower)
        )
        return self

    def make_views(self, batch: dict) -> list[Tensor]:
        """An augmented view of each image, and a second one when the batch has a generator
        ``view`` (augmented) or ``ssl_weight > 0`` (of the image itself, augmented again)."""
        sources = [batch["image"]]
        if "view" in batch or self.ssl_weight > 0:
            sources.append(batch.get("view", batch["image"]))
        return [self._memory_format(self.augment(s)) for s in sources]

    def _features(self, views: Tensor) -> Tensor:  # normalised images -> (B, F) backbone
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_image_tower):
            return self.backbone(views)

    def encode_image(self, views: Tensor) -> Tensor:
        """Normalised float images ``(B, C, H, W)`` -> ``(B, E)`` (not unit-norm)."""
        return self.image_projection(self._features(views))

    def encode_text(self, batch: dict) -> Tensor:
        """The batch's captions (``"tokens"``, or ``"caption"`` tokenized here) -> ``(B, E)``."""
        tokens = batch_tokens(batch, self)
        if self.text_cache_size > 0:
            features = self._cached_text_features(list(batch["caption"]), tokens)
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_text_tower):
                features = self.text_tower(tokens)
        return self.text_projection(features)

    def _cached_text_features(self, captions: list[str], tokens: Any) -> Tensor:
        def compute(index: list[int]) -> Tensor:
            with torch.no_grad():
                return self.text_tower(_rows(tokens, torch.tensor(index, device=self.device)))

        return self._text_cache(captions, compute)

    def logit_scale(self) -> Tensor:
        """``exp`` of the learnt log-scale, clamped to ``max_logit_scale``, in float32."""
        # float32 even under bf16 autocast: exp() of a value near 4.6 loses ~2 digits in bf16.
        log_scale = self.log_logit_scale.float().clamp(max=math.log(self.max_logit_scale))
        return log_scale.exp()

    # ---- training ---------------------------------------------------------------------------

    def training_embeddings(self, batch: dict) -> Embeddings:
        """``{"image": (B, V, E), "text": (B, V, E)}`` for the V = 1 or 2 pairs of each sample
        (a generator view with its own caption is a second pair), and ``"features": (B, 2, F)``,
        both views' backbone features, for SLIP's image loss when ``ssl_weight > 0`` (its
        projector runs in the loss, on the whole batch: its BatchNorm sees every image)."""
        b = len(batch["views"][0])
        features = self._features(torch.cat(batch["views"]))  # (B, F) or (2B, F)
        texts = self.encode_text(batch)  # (B, E)
        if "view_caption" in batch and len(features) == 2 * b:  # views are pairs of their own
            view_batch = {"caption": batch["view_caption"], "tokens": batch.get("view_tokens")}
            texts = torch.cat([texts, self.encode_text(view_batch)])  # (2B, E)
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

    # ---- evaluation: zero-shot classification and retrieval ----------------------------------

    def setup(self, stage: str) -> None:
        super().setup(stage)
        names = dict(getattr(getattr(self.trainer, "datamodule", None), "class_names", {}) or {})
        prompts = self.prompts or {attr: list(DEFAULT_PROMPTS) for attr in names}
        unknown = sorted(set(prompts) - set(names))
        if unknown:
            known = ", ".join(names) or "none"
            raise DataError(
                f"--model.prompts names attributes the data has no class names for: {unknown} "
                f"(the data's: {known}); pass --model.prompts null to skip zero-shot "
                "evaluation, or name the data's attributes"
            )
        self.zero_shot_prompts = {a: (names[a], templates) for a, templates in prompts.items()}
        runs = ("trained", "random") if stage == "test" else ("trained",)
        self.zero_shot = nn.ModuleDict(
            {
                run: nn.ModuleDict(
                    {
                        a: MulticlassAccuracy(len(classes), average="micro")
                        for a, (classes, _) in self.zero_shot_prompts.items()
                    }
                )
                for run in runs
            }
        )
        self.retrieval = nn.ModuleDict(
            {run: CrossModalRetrieval(chunk_size=self.retrieval_chunk_size) for run in runs}
        )

    def _towers(self) -> dict[str, Towers]:
        trained = Towers(self.image_projection, self.encode_text, "trained")
        return {"trained": trained, **getattr(self, "_random_towers", {})}

    def _start_eval(self) -> None:
        self._zero_shot_weights = {
            run: {
                attr: make_zero_shot_weights(
                    lambda texts, t=towers: t.text({"caption": texts}), classes, templates
                )
                for attr, (classes, templates) in self.zero_shot_prompts.items()
            }
            for run, towers in self._towers().items()
        }

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def on_test_epoch_start(self) -> None:
        self._start_eval()

    def _crossmodal_step(self, batch: dict, features: dict[str, Tensor]) -> None:
        groups = text_ids(batch["caption"]).to(self.device)
        for run, towers in self._towers().items():
            images = towers.image(features[towers.features])  # (B, E)
            texts = towers.text(batch)  # (B, E)
            self.retrieval[run].update(images, texts, groups)
            for attr, weights in self._zero_shot_weights[run].items():
                logits = zero_shot_logits(images, weights)  # (B, C)
                self.zero_shot[run][attr].update(logits, batch["labels"][attr])

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        features = self._eval_step(batch, dataloader_idx, random_init=None)
        if features is not None:  # a query batch: its backbone features, computed once
            self._crossmodal_step(batch, features)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        features = self._eval_step(batch, dataloader_idx, self._random_backbone[0])
        if features is not None:
            self._crossmodal_step(batch, features)

    def on_test_start(self) -> None:
        super().on_test_start()
        self._random_towers = {"random": self._random_init_towers()}

    def _random_init_towers(self) -> Towers:
        """The same architecture at a seeded random init; a frozen tower stays as it is."""
        parts = [self.image_projection, self.text_projection]
        if not self.freeze_text_tower:
            parts.append(self.text_tower)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            image_projection, text_projection, *text = [_reinitialized(p) for p in parts]
        text_tower = text[0] if text else self.text_tower
        text = lambda batch: text_projection(text_tower(batch_tokens(batch, self)))  # noqa: E731
        # The base evaluation's random backbone, or the trained one when it is frozen.
        return Towers(image_projection, text, "trained" if self.freeze_image_tower else "random")

    def _log_crossmodal(self, stage: str) -> dict[str, dict[str, float]]:
        results = {}
        for run in self.retrieval:
            values = {}
            if self.retrieval[run].update_count > 0:
                for name, value in self.retrieval[run].compute().items():
                    values[f"retrieval/{name}"] = value.item()
            for attr, accuracy in self.zero_shot[run].items():
                if accuracy.update_count > 0:
                    values[f"zero_shot/{attr}"] = accuracy.compute().item()
                accuracy.reset()
            self.retrieval[run].reset()
            results[run] = values
            prefix = stage if run == "trained" else f"{stage}/{run}"  # test/random/...
            self.log_dict({f"{prefix}/{k}": v for k, v in values.items()})
        return results

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_crossmodal("val")

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        results = self._log_crossmodal("test")
        if self.trainer.is_global_zero and results.get("trained"):
            classes = {a: len(c) for a, (c, _) in self.zero_shot_prompts.items()}
            print(crossmodal_report(results["trained"], results.get("random", {}), classes))


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """``x`` unchanged forward; its gradient multiplied by ``scale`` backward."""
    if scale == 1:
        return x
    if scale == 0:
        return x.detach()
    return x.detach() + scale * (x - x.detach())


def batch_tokens(batch: dict, model: CLIP) -> Any:
    """The batch's tokens; tokenized here when the loader had no tokenizer."""
    tokens = batch.get("tokens")
    if tokens is None:
        tokens = _to(model.tokenizer(list(batch["caption"])), model.device)
    return tokens


def crossmodal_report(
    trained: dict[str, float], random: dict[str, float], classes: dict[str, int]
) -> str:
    """The image-text table: zero-shot accuracy per attribute, then retrieval, trained vs random."""
    lines = [
        "Zero-shot classification (top-1 from class prompts) and retrieval, test split",
        f"{'metric':<22}{'chance':>8}{'random init':>13}{'trained':>10}{'gain':>10}",
    ]

    def row(name: str, key: str, chance: str) -> None:
        value, base = trained.get(key), random.get(key, float("nan"))
        if value is not None:
            lines.append(f"{name:<22}{chance:>8}{base:>13.3f}{value:>10.3f}{value - base:>+10.3f}")

    for attr, n in classes.items():
        row(f"zero-shot {attr}", f"zero_shot/{attr}", f"{1 / n:.3f}")
    for direction in ("i2t", "t2i"):
        for k in (1, 5, 10):
            row(f"{direction} R@{k}", f"retrieval/{direction}/R@{k}", "")
        row(f"{direction} median rank", f"retrieval/{direction}/median_rank", "")
    return "\n".join(lines)


def _to(tokens: Any, device: torch.device) -> Any:
    if isinstance(tokens, dict):
        return {k: v.to(device) for k, v in tokens.items()}
    return tokens.to(device)


def _rows(tokens: Any, index: Tensor) -> Any:
    if isinstance(tokens, dict):
        return {k: v[index] for k, v in tokens.items()}
    return tokens[index]


def _reinitialized(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with fresh parameters from each layer's own initialiser."""
    module = copy.deepcopy(module)
    for layer in module.modules():
        for init in ("init_parameters", "reset_parameters", "_reset_parameters"):
            if callable(getattr(layer, init, None)):
                getattr(layer, init)()
                break
    return module
