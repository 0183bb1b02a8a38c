"""The conditional-similarity benchmark: does an embedding know *in what respect* images match?

For a query image and a condition ("same color", "both are red"), rank a gallery; the relevant
images share the attribute the condition names. Four scorers rank the same gallery:

- ``conditioned``: the conditioned embeddings of query and gallery, both under the query's text;
- ``image``: the unconditioned image embedding (what a plain embedding knows);
- ``text``: the text alone against the gallery's image embeddings (the condition's words);
- ``image+text``: the sum of the unit query image and text embeddings (the composed-retrieval
  baseline).

Beside them, two controls (:data:`CONTROLS`):

- ``wrong condition``: the conditioned embeddings under another condition's text for the same
  query (a ``letter`` query ranked under its ``family`` phrasing): a head that reads the text
  falls towards the unconditioned ``image`` figure or below; one that ignores it does not;
- ``probe``: the upper bound of what a head can read out of the frozen image embedding, a
  linear probe per condition (:func:`~contrastive.evaluation.linear_probe.fit_linear_probe`)
  fit on labelled bank images, each image then ranked by the cosine of its predicted class
  probabilities for the condition's attribute.

Each reports hit rate at 1 and 5 (``R@k``: a relevant image among the top ``k``) and mean average
precision (the ranking is :func:`~contrastive.evaluation.retrieval.rank_relevant`), and the
triplet accuracy: for each query a relevant and an irrelevant gallery image are drawn (seeded),
and the positive must score higher. On triplet data (anchor, positive, hard negative, condition)
:class:`TripletAccuracy` counts the same four scorers per condition.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from contrastive.evaluation.common import append, cat_or_none, dataset_order, num_rows
from contrastive.evaluation.linear_probe import fit_linear_probe
from contrastive.evaluation.retrieval import rank_relevant
from contrastive.text import distinct_texts

SCORERS = ("conditioned", "image", "text", "image+text")
CONTROLS = ("wrong condition", "probe")
ROWS = SCORERS + CONTROLS  # the order of a table's rows

Results = dict[tuple[str, str, str], dict[str, float]]  # (condition, phrasing, scorer) -> metrics


@runtime_checkable
class ConditionalModel(Protocol):
    """What the benchmark needs from a method (``Conditional`` has it).

    ``condition_inputs`` is computed once per gallery image and ``condition_from`` run under each
    distinct text, so the towers run once, not once per text.
    """

    def encode_image(self, images: Tensor) -> Tensor:
        """uint8 ``(B, C, H, W)`` -> unconditioned ``(B, E)`` image embeddings."""

    def encode_text(self, texts: list[str]) -> Tensor:
        """Texts -> ``(N, E)`` embeddings in the image embedding's space."""

    def condition_inputs(self, images: Tensor) -> Tensor:
        """uint8 ``(B, C, H, W)`` -> what the conditioning reads, ``(B, ...)``."""

    def condition_from(self, inputs: Tensor, text: Tensor) -> Tensor:
        """``(B, ...)`` inputs under ``(B, E)`` texts, row by row -> unit ``(B, D)``."""


class ConditionSpec(NamedTuple):
    """One row group of the benchmark: an attribute phrased one way.

    Attributes:
        name: the attribute (``"color"``), also its label column's name.
        phrasing: ``"seen"`` (phrasings used in training) or ``"held-out"``.
        templates: phrasings, ``{value}`` standing for the query's class name; query ``q`` of
            the benchmark gets ``templates[q % len(templates)]``.
        class_names: the attribute's class names, by label.
    """

    name: str
    phrasing: str
    templates: tuple[str, ...]
    class_names: tuple[str, ...]

    def texts(self, labels: Tensor) -> list[str]:
        """The condition text of each query, from its ``(Q,)`` labels of this attribute."""
        return [
            self.templates[i % len(self.templates)].format(value=self.class_names[y])
            for i, y in enumerate(labels.tolist())
        ]


def _triplets(
    relevant: Tensor, candidate: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """A random relevant and a random irrelevant candidate for each ``(Q, G)`` query row, and
    ``(Q,)`` whether the query has both; ``candidate`` says what may be drawn at all."""
    noise = torch.rand(relevant.shape, generator=generator).to(relevant.device)
    positive, negative = relevant & candidate, ~relevant & candidate
    pos = torch.where(positive, noise, -1.0).argmax(1)
    neg = torch.where(negative, noise, -1.0).argmax(1)
    return pos, neg, positive.any(1) & negative.any(1)


def conditional_benchmark(
    model: ConditionalModel,
    inputs: Tensor,
    embeddings: Tensor,
    labels: dict[str, Tensor],
    specs: Sequence[ConditionSpec],
    num_queries: int = 512,
    seed: int = 0,
    bank: tuple[Tensor, dict[str, Tensor]] | None = None,
) -> Results:
    """Run the benchmark on one labelled split, each image a query against all the others.

    Args:
        model: the conditioned model (its ``condition_from`` and ``encode_text``).
        inputs: ``(G, ...)`` the gallery's ``condition_inputs``.
        embeddings: ``(G, E)`` the unconditioned image embeddings.
        labels: ``{attribute: (G,) class}`` for every spec's attribute.
        specs: the conditions and their phrasings.
        num_queries: the first ``num_queries`` images are the queries.
        seed: the triplets' draw (and the probe's held-out slice).
        bank: ``(M, E)`` embeddings and ``{attribute: (M,) class}`` of labelled images the
            ``probe`` control is fit on; ``None``: no probe row.

    Returns:
        ``{(condition, phrasing, scorer): {"R@1", "R@5", "mAP", "triplet"}}``, the scorers
        and the controls (``wrong condition`` where another condition exists).
    """
    gallery = len(embeddings)
    queries = torch.arange(min(num_queries, gallery), device=embeddings.device)
    image = F.normalize(embeddings.float(), dim=-1)  # (G, E)
    self_mask = F.one_hot(queries, gallery).bool()  # (Q, G)
    generator = torch.Generator().manual_seed(seed)
    probes = _probe_scores(embeddings, bank, specs, queries, seed) if bank is not None else {}
    results = {}
    for spec in specs:
        y = labels[spec.name]
        relevant = (y[queries, None] == y[None]) & ~self_mask  # (Q, G)
        pos, neg, has_both = _triplets(relevant, ~self_mask, generator)
        unique, which = distinct_texts(spec.texts(y[queries]))  # U texts, (Q,) each query's
        text = F.normalize(model.encode_text(unique).float(), dim=-1)  # (U, E)
        which = which.to(image.device)
        scores = {
            "conditioned": _conditioned_scores(model, inputs, queries, text, which),
            "image": image[queries] @ image.T,
            "text": text[which] @ image.T,
            "image+text": F.normalize(image[queries] + text[which], dim=-1) @ image.T,
        }
        wrong = _wrong_spec(spec, specs)
        if wrong is not None:  # the same queries, under another condition's words
            unique, which = distinct_texts(wrong.texts(labels[wrong.name][queries]))
            text = F.normalize(model.encode_text(unique).float(), dim=-1)
            which = which.to(image.device)
            scores["wrong condition"] = _conditioned_scores(model, inputs, queries, text, which)
        if spec.name in probes:
            scores["probe"] = probes[spec.name]
        for scorer, s in scores.items():
            s = s.masked_fill(self_mask, float("-inf"))
            ranking = rank_relevant(s, relevant)
            rows = torch.arange(len(queries), device=s.device)
            correct = (s[rows, pos] > s[rows, neg])[has_both].float()
            results[(spec.name, spec.phrasing, scorer)] = {
                "R@1": ranking.recall_at(1).mean().item(),
                "R@5": ranking.recall_at(5).mean().item(),
                "mAP": ranking.ap.mean().item(),
                "triplet": correct.mean().item() if len(correct) else float("nan"),
            }
    return results


def _wrong_spec(spec: ConditionSpec, specs: Sequence[ConditionSpec]) -> ConditionSpec | None:
    """The next spec (cyclically) naming another condition, in the same phrasing if it has
    one: the ``wrong condition`` control's text."""
    names = list(dict.fromkeys(s.name for s in specs))
    if len(names) < 2:
        return None
    other = names[(names.index(spec.name) + 1) % len(names)]
    candidates = [s for s in specs if s.name == other]
    same = [s for s in candidates if s.phrasing == spec.phrasing]
    return (same or candidates)[0]


def _probe_scores(
    embeddings: Tensor,
    bank: tuple[Tensor, dict[str, Tensor]],
    specs: Sequence[ConditionSpec],
    queries: Tensor,
    seed: int,
) -> dict[str, Tensor]:
    """``{attribute: (Q, G)}`` cosine of the probe's class probabilities of each query and every
    gallery image, the probes fit on the bank (every attribute at once, each its own decay)."""
    features, bank_labels = bank
    names = list(dict.fromkeys(s.name for s in specs))
    classes = [len(next(s for s in specs if s.name == n).class_names) for n in names]
    y = torch.stack([bank_labels[n] for n in names], 1).to(features.device)  # (M, A)
    probe = fit_linear_probe(features.float(), y, classes, seed=seed).to(embeddings.device)
    with torch.autocast(embeddings.device.type, enabled=False):
        logits = probe(embeddings.float()).split(classes, dim=1)  # A x (G, C_a)
    out = {}
    for name, z in zip(names, logits, strict=True):
        p = F.normalize(z.softmax(dim=1), dim=1)  # (G, C)
        out[name] = p[queries] @ p.T  # (Q, G)
    return out


def _conditioned_scores(
    model: ConditionalModel, inputs: Tensor, queries: Tensor, text: Tensor, which: Tensor
) -> Tensor:
    """``(Q, G)`` cosine of each query and every gallery image, both under the query's text."""
    scores = torch.empty(len(queries), len(inputs), device=text.device)
    for u in range(len(text)):
        rows = (which == u).nonzero().squeeze(1)  # queries with text u
        if len(rows) == 0:
            continue
        t = text[u : u + 1]
        gallery = model.condition_from(inputs, t.expand(len(inputs), -1)).float()  # (G, D)
        q = model.condition_from(inputs[queries[rows]], t.expand(len(rows), -1)).float()
        scores[rows] = F.normalize(q, dim=-1) @ F.normalize(gallery, dim=-1).T
    return scores


class BenchmarkFunctions(NamedTuple):
    """A :class:`ConditionalModel`'s two functions the benchmark calls in ``compute``."""

    condition_from: Callable[[Tensor, Tensor], Tensor]
    encode_text: Callable[[list[str]], Tensor]


class ConditionalBenchmark(Metric):
    """:func:`conditional_benchmark` over an evaluation run: the gallery's conditioning inputs,
    image embeddings, labels and dataset ids accumulated batch by batch ("cat" states).

    At most ``max_gallery`` images per process are kept (later ones are counted in ``dropped``):
    with ``token`` conditioning the inputs are the images themselves. Given dataset ids, the
    gathered gallery is put back in dataset order (a ``DistributedSampler``'s padding dropped),
    so the queries, the draw and the result under DDP are one process's.

    Args:
        functions: ``condition_from`` and ``encode_text`` of the model, as a
            :class:`BenchmarkFunctions` (plain callables, so the model is not a part of the metric).
        specs: the conditions and their phrasings.
        fields: the label fields, in the order of the label columns given to ``update``.
        num_queries: queries (the first images of the gallery).
        seed: the triplets' draw.
        max_gallery: images kept per process, gallery and bank each.
    """

    full_state_update = False

    def __init__(
        self,
        functions: BenchmarkFunctions,
        specs: Sequence[ConditionSpec],
        fields: Sequence[str],
        num_queries: int = 512,
        seed: int = 0,
        max_gallery: int = 8192,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        missing = sorted({s.name for s in specs} - set(fields))
        if missing:
            raise ValueError(f"the benchmark's conditions {missing} are not label fields {fields}")
        self.functions, self.specs, self.fields = functions, tuple(specs), tuple(fields)
        self.num_queries, self.seed, self.max_gallery = num_queries, seed, max_gallery
        for name in ("inputs", "embeddings", "labels", "ids", "bank", "bank_labels", "bank_ids"):
            self.add_state(name, [], dist_reduce_fx="cat")
        self.add_state("dropped", torch.tensor(0), dist_reduce_fx="sum")
        self.gallery_size = 0

    def update_bank(self, embeddings: Tensor, labels: Tensor, ids: Tensor) -> None:
        """Add labelled bank images for the ``probe`` control: ``(B, E)`` unconditioned
        embeddings, ``(B, A)`` labels and ``(B,)`` dataset ids (beyond ``max_gallery``, left
        out)."""
        room = max(0, self.max_gallery - num_rows(self.bank))
        if room > 0:
            append(self, "bank", embeddings[:room].detach())
            append(self, "bank_labels", labels[:room].detach().long())
            append(self, "bank_ids", ids[:room].detach())

    def update(self, inputs: Tensor, embeddings: Tensor, labels: Tensor, ids: Tensor) -> None:
        """Add ``(B, ...)`` conditioning inputs, ``(B, E)`` embeddings, ``(B, A)`` labels (one
        column per field) and ``(B,)`` dataset ids."""
        room = max(0, self.max_gallery - num_rows(self.embeddings))
        self.dropped += len(embeddings) - min(room, len(embeddings))
        if room == 0:
            return
        for name, value in (("inputs", inputs), ("embeddings", embeddings), ("ids", ids)):
            append(self, name, value[:room].detach())
        append(self, "labels", labels[:room].detach().long())

    def compute(self) -> Results:
        """The benchmark's results on the gathered gallery."""
        embeddings = cat_or_none(self.embeddings)
        if embeddings is None:
            return {}
        keep = dataset_order(dim_zero_cat(self.ids))
        self.gallery_size = len(keep)  # the images ranked, after the DDP padding is dropped
        inputs, labels = dim_zero_cat(self.inputs)[keep], dim_zero_cat(self.labels)[keep]
        columns = {name: labels[:, i] for i, name in enumerate(self.fields)}
        bank = cat_or_none(self.bank)
        if bank is not None:
            order = dataset_order(dim_zero_cat(self.bank_ids))
            bank_labels = dim_zero_cat(self.bank_labels)[order]
            bank = bank[order], {n: bank_labels[:, i] for i, n in enumerate(self.fields)}
        return conditional_benchmark(
            self.functions, inputs, embeddings[keep], columns, self.specs, self.num_queries,
            self.seed, bank,
        )  # fmt: skip


def triplet_correct(model: ConditionalModel, batch: dict) -> dict[str, Tensor]:
    """For each scorer, whether each triplet's positive (``view``) outscores its ``negative``
    for the anchor (``image``) under its condition ``text``: ``{scorer: (B,) bool}``."""
    text = F.normalize(model.encode_text(list(batch["text"])).float(), dim=-1)  # (B, E)
    keys = ("image", "view", "negative")
    image = [F.normalize(model.encode_image(batch[k]).float(), dim=-1) for k in keys]
    cond = [model.condition_from(model.condition_inputs(batch[k]), text).float() for k in keys]
    triples = {
        "conditioned": cond,
        "image": image,
        "text": (text, image[1], image[2]),
        "image+text": (F.normalize(image[0] + text, dim=-1), image[1], image[2]),
    }
    return {s: (q * p).sum(-1) > (q * n).sum(-1) for s, (q, p, n) in triples.items()}


class TripletAccuracy(Metric):
    """Per condition and scorer, the share of triplets whose positive outscores the hard negative
    (counts in "sum" states, so DDP gives the global share).

    Args:
        conditions: every condition name the data has (a state row each).
    """

    full_state_update = False

    def __init__(self, conditions: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conditions = tuple(conditions)
        shape = (len(self.conditions), len(SCORERS))
        self.add_state("correct", torch.zeros(shape), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(shape), dist_reduce_fx="sum")

    def update(self, correct: dict[str, Tensor], conditions: Sequence[str], keep: Tensor) -> None:
        """Count ``{scorer: (B,) bool}`` for rows whose ``keep`` is set, by ``conditions``."""
        unknown = sorted(set(conditions) - set(self.conditions))
        if unknown:
            raise ValueError(f"conditions {unknown} are not among {list(self.conditions)}")
        rows = torch.tensor([self.conditions.index(c) for c in conditions], device=keep.device)
        keep = keep.bool()
        for s, scorer in enumerate(SCORERS):
            self.correct[:, s].index_add_(0, rows[keep], correct[scorer][keep].float())
            self.total[:, s].index_add_(0, rows[keep], torch.ones_like(rows[keep]).float())

    def compute(self) -> Results:
        """``{(condition, "triplets", scorer): {"triplet": share}}`` for conditions seen."""
        return {
            (c, "triplets", scorer): {"triplet": (self.correct[i, s] / self.total[i, s]).item()}
            for i, c in enumerate(self.conditions)
            for s, scorer in enumerate(SCORERS)
            if self.total[i, s] > 0
        }


def mean_over_conditions(results: Results) -> dict[str, dict[str, float]]:
    """``{scorer: each metric's mean over the (condition, phrasing) rows that have it}``."""
    means: dict[str, dict[str, float]] = {}
    for scorer in ROWS:
        rows = [m for (_, _, s), m in results.items() if s == scorer]
        keys = dict.fromkeys(k for r in rows for k in r)
        if rows:
            means[scorer] = {
                k: sum(r[k] for r in rows if k in r) / sum(k in r for r in rows) for k in keys
            }
    return means
