"""The base of methods with an image and a text tower: CLIP (SigLIP, LiT, SLIP) and Conditional."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn

from contrastive.backbones import load_weights
from contrastive.cache import FrozenCache, image_keys
from contrastive.checkpoints import resolve_checkpoint
from contrastive.methods.base import ContrastiveMethod
from contrastive.text import TextTower, token_rows

EVAL_MODE_WARNING = r"Found \d+ module\(s\) in eval mode at the start of training"


class TwoTowerMethod(ContrastiveMethod):
    """A method whose image tower (``backbone``, then ``image_projection``) and text tower
    (``text_tower``, then ``text_projection``) meet in one embedding space.

    A subclass builds the two projections and then calls :meth:`freeze_towers`. A frozen tower
    gets no gradient (so no optimizer state) and stays in eval mode through ``train()``, as it
    was loaded: no dropout, fixed BatchNorm statistics.

    Args:
        text_tower: e.g. :class:`~contrastive.text.OpenCLIPText` or
            :class:`~contrastive.text.SentenceTransformerText`, by ``class_path`` in YAML.
        freeze_image_tower: no gradient into ``backbone``.
        freeze_text_tower: no gradient into ``text_tower``.
        text_cache_size: with a frozen text tower, remember up to this many texts' tower outputs
            (a frozen tower always gives the same); 0 turns the cache off.
        image_cache_size: with a frozen image tower, remember up to this many images' backbone
            features, by content (:func:`~contrastive.cache.image_keys`); for data whose images
            repeat unaugmented (a conditioning head's triplets), where each epoch after the first
            then skips the tower. 0 (default) turns it off.
        **kwargs: :class:`ContrastiveMethod` arguments (backbone, augment, optimizer, ...).
    """

    def __init__(
        self,
        text_tower: TextTower,
        freeze_image_tower: bool = False,
        freeze_text_tower: bool = False,
        text_cache_size: int = 100_000,
        image_cache_size: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        for name, size in (("text", text_cache_size), ("image", image_cache_size)):
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ValueError(f"{name}_cache_size must be a count >= 0, got {size!r}")
        self.text_tower = text_tower
        self.freeze_image_tower, self.freeze_text_tower = freeze_image_tower, freeze_text_tower
        self._text_cache = FrozenCache(text_cache_size if freeze_text_tower else 0)
        self._image_cache = FrozenCache(image_cache_size if freeze_image_tower else 0)

    def _frozen_towers(self) -> list[nn.Module]:
        flagged = (
            (self.freeze_image_tower, self.backbone),
            (self.freeze_text_tower, self.text_tower),
        )
        return [tower for frozen, tower in flagged if frozen]

    def freeze_towers(self, with_projections: bool) -> None:
        """Freeze the towers so flagged, with their projections when ``with_projections``."""
        projections = {self.backbone: self.image_projection, self.text_tower: self.text_projection}
        for tower in self._frozen_towers():
            for module in (tower, projections[tower])[: 1 + with_projections]:
                module.requires_grad_(False).eval()

    def load_towers(self, path: str) -> None:
        """Load both towers (and their projections) from a CLIP checkpoint or run folder."""
        checkpoint = resolve_checkpoint(path)
        for prefix in ("backbone", "image_projection", "text_tower", "text_projection"):
            module = getattr(self, prefix)
            if list(module.state_dict()):
                load_weights(module, checkpoint, f"{prefix}.", f"this model's {prefix}")

    def on_fit_start(self) -> None:
        # Lightning warns of any module in eval mode when training starts; a frozen tower (and
        # its frozen projection) is there by design, so the warning is left out until then when
        # they are all it would count (any other module in eval mode is still reported).
        super().on_fit_start()
        projections = (self.image_projection, self.text_projection)
        frozen_projections = [
            p for p in projections if not any(q.requires_grad for q in p.parameters())
        ]
        frozen = {id(m) for t in self._frozen_towers() + frozen_projections for m in t.modules()}
        if all(id(m) in frozen for m in self.modules() if not m.training):
            self._quiet = warnings.catch_warnings()
            self._quiet.__enter__()
            warnings.filterwarnings("ignore", EVAL_MODE_WARNING, PossibleUserWarning)

    def on_train_start(self) -> None:  # Lightning's check is done: the filters as they were
        super().on_train_start()
        self._restore_warnings()

    def teardown(self, stage: str) -> None:  # a fit that stopped before training started
        super().teardown(stage)
        self._restore_warnings()

    def _restore_warnings(self) -> None:
        if (quiet := self.__dict__.pop("_quiet", None)) is not None:
            quiet.__exit__(None, None, None)

    def load_state_dict(self, *args, **kwargs):  # new weights: what the caches hold is stale
        self._forget()
        return super().load_state_dict(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):  # .to(), .double(), ...: the rows no longer fit
        self._forget()
        return super()._apply(fn, *args, **kwargs)

    def _forget(self) -> None:
        for cache in ("_text_cache", "_image_cache"):  # (not yet there inside __init__)
            if cache in self.__dict__:
                self.__dict__[cache].clear()

    def train(self, mode: bool = True) -> TwoTowerMethod:
        super().train(mode)
        for tower in self._frozen_towers():
            tower.eval()
        return self

    def _features(self, views: Tensor) -> Tensor:  # normalised images -> (B, F) backbone
        if not self.freeze_image_tower:
            return self.backbone(views)
        with torch.no_grad():
            if self._image_cache.size == 0:
                return self.backbone(views)
            return self._image_cache(image_keys(views), lambda rows: self.backbone(views[rows]))

    def _text_features(self, texts: list[str], tokens: Any) -> Tensor:
        """The frozen text tower's outputs for ``texts`` (whose ``tokens`` are given), each
        distinct text computed once ever, up to ``text_cache_size`` texts."""

        def compute(rows: list[int]) -> Tensor:
            with torch.no_grad():
                return self.text_tower(token_rows(tokens, torch.tensor(rows)))

        return self._text_cache(texts, compute)

    def _views(self, images: Tensor) -> Tensor:  # uint8 (or [0, 1] float) -> normalised
        return self._memory_format(self.augment.normalize(images))

    def encode_image(self, images: Tensor) -> Tensor:
        """uint8 (or [0, 1] float) images ``(B, C, H, W)`` -> ``(B, E)`` (not unit-norm)."""
        return self.image_projection(self._features(self._views(images)))


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """``x`` unchanged forward; its gradient multiplied by ``scale`` backward."""
    if scale == 1:
        return x
    if scale == 0:
        return x.detach()
    return x.detach() + scale * (x - x.detach())


__all__ = ["TwoTowerMethod", "scale_gradient"]
