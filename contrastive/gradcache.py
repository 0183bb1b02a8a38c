"""Gradient caching: the loss of a large batch in the activation memory of one chunk.

Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"
(arXiv:2101.06983). A contrastive loss couples every sample of the batch, but only through the
embeddings; so the batch can be (1) embedded chunk by chunk without keeping activations, (2) the
loss computed on all the embeddings and its gradient taken with respect to them (the cache), and
(3) each chunk re-run with its graph and the cached gradient back-propagated through it. Memory
holds one chunk's activations and the whole batch's embeddings and inputs; the price is one
extra forward pass.

Here steps (1) and (3) are :func:`torch.utils.checkpoint.checkpoint` (non-reentrant) around each
chunk's embedding: its forward keeps no activations, and the one ``backward()`` of the loss
first computes the gradient at the embeddings (step 2, the loss's own graph) and then re-runs
each chunk and back-propagates that gradient into it. Because it is a single backward pass, the
method stays in Lightning's automatic optimization (gradient clipping, accumulation, AMP loss
scaling and the schedule work unchanged; under manual optimization Lightning refuses the
Trainer's ``gradient_clip_val`` and ``accumulate_grad_batches``), and DDP all-reduces each
gradient bucket once per step, as for a plain batch: a parameter's gradient is accumulated
once, after every chunk has sent its part, so no ``no_sync()`` is needed.

Random state: the CPU and device RNG states are recorded before each chunk's first pass and
restored for its re-run (``preserve_rng_state``), so dropout and stochastic depth draw the same
masks both times. The views are made once per batch in ``on_after_batch_transfer``, before any
chunking, so augmentation needs no replay.

BatchNorm: statistics are those of each chunk, so with BatchNorm the result is that of a batch
normalised chunk by chunk, not the full batch's (exact for GroupNorm, LayerNorm or no norm).
Running statistics are updated once per chunk, in its first pass (``chunks`` momentum updates
per step); the re-run leaves them as they are.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

Embeddings = dict[str, Tensor]


def check_chunk_size(chunk_size: int | None) -> int | None:
    """``chunk_size`` itself when it is ``None`` or ``>= 1``; a one-line error otherwise."""
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None (no gradient cache), got {chunk_size}")
    return chunk_size


def embed_in_chunks(
    embed: Callable[[dict], Embeddings], batch: dict, chunk_size: int | None, module: nn.Module
) -> Embeddings:
    """``embed(batch)``, computed chunk by chunk with gradient caching when the batch is larger.

    Args:
        embed: a training batch -> embeddings, each ``(B, ...)`` with one row per sample (the
            views of a sample along a later dimension), so that chunks concatenate row-wise.
        batch: the training batch; ``batch["views"][0]`` gives the number of samples ``B``, and
            every tensor or list in it has one row per sample (see :func:`split_rows`).
        chunk_size: samples per chunk; ``None``, or a batch no larger, embeds it at once.
        module: the module whose BatchNorm layers the re-runs must not update.

    Returns:
        ``embed``'s dict, each value ``(B, ...)``: the chunks' outputs in batch order.
    """
    if chunk_size is None or len(batch["views"][0]) <= chunk_size or not torch.is_grad_enabled():
        return embed(batch)
    contexts = functools.partial(_contexts, module)
    parts = [
        checkpoint(embed, chunk, use_reentrant=False, context_fn=contexts, preserve_rng_state=True)
        for chunk in split_rows(batch, chunk_size)
    ]
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def split_rows(batch: dict, chunk_size: int) -> list[dict]:
    """The batch in chunks of ``chunk_size`` samples (the last one may be smaller).

    Tensors are cut along dim 0, lists of tensors (the views) each along dim 0, other lists
    (captions) by item, dicts (labels, tokens) recursively; anything else is shared.
    """
    n = len(batch["views"][0])
    return [_rows(batch, slice(i, min(i + chunk_size, n))) for i in range(0, n, chunk_size)]


def _rows(value: Any, rows: slice) -> Any:
    if isinstance(value, Tensor):
        return value[rows] if value.ndim > 0 else value
    if isinstance(value, dict):
        return {k: _rows(v, rows) for k, v in value.items()}
    if isinstance(value, list | tuple) and value and all(isinstance(v, Tensor) for v in value):
        return [v[rows] for v in value]  # several (B, ...) tensors: the views
    if isinstance(value, list | tuple):
        return value[rows]  # one item per sample: captions
    return value


def by_sample(x: Tensor, n: int) -> Tensor:
    """``(V * n, ...)`` rows stacked view by view -> ``(n, V, ...)``, one row per sample."""
    return x.unflatten(0, (-1, n)).transpose(0, 1)


def by_view(x: Tensor) -> Tensor:
    """``(n, V, ...)`` -> ``(V * n, ...)``: all first views, then all second views, ..."""
    return x.transpose(0, 1).flatten(0, 1)


def _contexts(module: nn.Module) -> tuple[contextlib.AbstractContextManager, ...]:
    """The first pass runs as it is; the re-run leaves BatchNorm running statistics alone."""
    return contextlib.nullcontext(), frozen_running_stats(module)


@contextlib.contextmanager
def frozen_running_stats(module: nn.Module) -> Iterator[None]:
    """Training-mode BatchNorm layers of ``module`` normalise with batch statistics as usual
    but leave their running statistics and ``num_batches_tracked`` unchanged.

    Momentum 0 rather than ``track_running_stats=False``: the layer must save the same tensors
    for backward as in the first pass, which the checkpoint's recomputation checks.
    """
    norms = [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = 1 * running + 0 * batch: unchanged, bit for bit
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved, strict=True):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)
