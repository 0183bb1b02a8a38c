"""Evaluation: metrics that judge embeddings, and the callbacks that run them beside any method.

Metrics (torchmetrics-shaped: states with their DDP reduction, ``update``/``compute``, a
functional twin, bounded memory), one subject per file:

- ``geometry.py``: alignment, uniformity, RankMe (as published) and its centred form, std;
- ``knn.py``: weighted kNN classification against a bank;
- ``linear_probe.py``: the offline linear probe (L-BFGS, weight decay chosen on held-out rows);
- ``retrieval.py``: the one ranking, and image-text retrieval;
- ``zero_shot.py``: zero-shot classification from class prompts;
- ``conditional_benchmark.py``: the conditional-similarity benchmark and triplet accuracy;
- ``genecis_benchmark.py``: GeneCIS's Recall@k of a target among its own gallery.

Callbacks (named in a config's ``trainer.callbacks``; each needs only what its method offers):

- ``embedding_report.py``: ``EmbeddingReport``, kNN, geometry and, at test, the linear probe,
  trained against random init (``random_init.py``), as a table and a PNG;
- ``online_probe.py``: ``OnlineLinearProbe``, linear probes trained during fit;
- ``crossmodal_report.py``: ``CrossModalEvaluation``, zero-shot and retrieval (CLIP);
- ``conditional_report.py``: ``ConditionalEvaluation``, the conditional benchmark;
- ``genecis_report.py``: ``GeneCISEvaluation``, the GeneCIS table (inert on other data);
- ``projector.py``: ``EmbeddingProjector``, the projector and a nearest-neighbour grid;
- ``prediction_writer.py``: ``EmbeddingWriter``, what ``contrastive predict`` writes.

``callback.py`` is what the callbacks share, ``render.py`` the tables and charts, ``probe.py``
the ``contrastive probe`` command.
"""

from contrastive.evaluation.conditional_report import ConditionalEvaluation
from contrastive.evaluation.crossmodal_report import CrossModalEvaluation
from contrastive.evaluation.embedding_report import EmbeddingReport
from contrastive.evaluation.genecis_report import GeneCISEvaluation
from contrastive.evaluation.online_probe import OnlineLinearProbe
from contrastive.evaluation.prediction_writer import EmbeddingWriter
from contrastive.evaluation.projector import EmbeddingProjector

__all__ = [
    "ConditionalEvaluation",
    "CrossModalEvaluation",
    "EmbeddingProjector",
    "EmbeddingReport",
    "EmbeddingWriter",
    "GeneCISEvaluation",
    "OnlineLinearProbe",
]
