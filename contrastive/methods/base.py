"""The base LightningModule every method subclasses.

It owns what methods share: the backbone from the registry, the view augmentation made on the
device, the optimizer and its warmup-then-cosine schedule, ``embed()``, gathering across ranks,
the non-finite loss guard, and the evaluation hooks (kNN per attribute, alignment, uniformity,
effective rank during validation; trained against random init in ``test``). A subclass builds
its heads in ``__init__`` and implements :meth:`ContrastiveMethod.training_loss`, or the two
halves it is made of: :meth:`~ContrastiveMethod.training_embeddings` and
:meth:`~ContrastiveMethod.loss_from_embeddings` (which gives it gradient caching, see
``gradcache.py``).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from contrastive import distributed
from contrastive.augment import Augment
from contrastive.backbones import create_backbone
from contrastive.checkpoint_io import good_checkpoint
from contrastive.datamodules.common import SkipReport, Tokenizer
from contrastive.gradcache import Embeddings, check_chunk_size, embed_in_chunks
from contrastive.losses import Tiling, info_nce, info_nce_tiled
from contrastive.metrics import Alignment, EffectiveRank, EmbeddingStd, KNNAccuracy, Uniformity
from contrastive.queue import EmbeddingQueue


class NonFiniteError(RuntimeError):
    """The loss or the weights stopped being finite; training stops and no checkpoint is written
    from them. The message names the newest step checkpoint that is good to resume from."""


class ContrastiveMethod(LightningModule):
    """Base class of contrastive and self-supervised methods.

    Args:
        backbone: a name from the backbone registry (``list_backbones()``), e.g. ``small_cnn``,
            ``resnet18`` or ``timm:resnet18``.
        backbone_kwargs: keyword arguments for ``create_backbone`` (``small_stem``,
            ``pretrained``, ``checkpoint``, ...).
        augment: the view distribution, applied on the device to training batches. ``None``:
            normalisation only.
        optimizer: a callable taking parameter groups, e.g. ``torch.optim.SGD``,
            ``torch.optim.AdamW`` or ``timm.optim.Lars`` with its ``init_args`` in YAML. Bias and
            normalisation parameters (``ndim <= 1``) get no weight decay.
        warmup_epochs: linear warmup length, in epochs (fractions allowed), stepped per batch.
        gather_negatives: gather embeddings from every rank so that each anchor sees the global
            batch as negatives, and sum batch statistics over ranks (on by default; off gives
            per-rank negatives and statistics).
        knn_k: neighbours of the kNN monitor.
        knn_temperature: temperature of the kNN monitor's weighted vote.
        collapse_rank_fraction: warn when the effective rank of the (centred) validation
            embeddings falls below this fraction of their dimension (and always below 2).
        channels_last: move images to channels-last memory format (faster convolutions with
            bf16 on recent CPUs and GPUs).
        chunk_size: embed each training batch in chunks of this many samples with gradient
            caching (``gradcache.py``): the same loss and gradients in one chunk's activation
            memory, for one extra forward pass. Exact without BatchNorm; with it, each chunk is
            normalised on its own. Needs the two halves :meth:`training_embeddings` and
            :meth:`loss_from_embeddings`. ``None``: the whole batch at once.
    """

    def __init__(
        self,
        backbone: str = "small_cnn",
        backbone_kwargs: dict | None = None,
        augment: Augment | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        warmup_epochs: float = 0.0,
        gather_negatives: bool = True,
        knn_k: int = 20,
        knn_temperature: float = 0.07,
        collapse_rank_fraction: float = 0.02,
        channels_last: bool = False,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        # Built by LightningCLI, the hyper-parameters are the config (class paths and init
        # args), which load_from_checkpoint instantiates again: keep all of it, text tower
        # included. Built in Python they would be the module objects: their weights are in
        # the state_dict, so only the plain values are kept.
        from_config = _given_hyperparameters.get() is not None
        self.save_hyperparameters(
            ignore=[] if from_config else ["augment", "optimizer", "text_tower"]
        )
        self.backbone = create_backbone(backbone, **(backbone_kwargs or {}))
        self.augment = augment if augment is not None else Augment()
        self.augment.use_backbone_stats(self.backbone.preprocessing)  # unless given its own
        self.optimizer = optimizer
        self.warmup_epochs = warmup_epochs
        self.gather_negatives = gather_negatives
        self.knn_k = knn_k
        self.knn_temperature = knn_temperature
        self.collapse_rank_fraction = collapse_rank_fraction
        self.channels_last = channels_last
        self.chunk_size = check_chunk_size(chunk_size)
        if chunk_size is not None and not self._has_embedding_halves():
            raise ValueError(
                f"chunk_size needs {type(self).__name__} to implement training_embeddings and "
                "loss_from_embeddings (it implements training_loss only)"
            )
        self._skipped = SkipReport()
        self._views_checked = False

    # ---- what a subclass implements ---------------------------------------------------------

    def training_loss(self, batch: dict) -> Tensor:
        """The loss of one training batch; ``batch["views"]`` holds the augmented views.

        By default :meth:`loss_from_embeddings` of :meth:`training_embeddings`, the batch
        embedded in chunks of ``chunk_size`` samples with gradient caching when it is set.
        """
        embeddings = embed_in_chunks(self.training_embeddings, batch, self.chunk_size, self)
        return self.loss_from_embeddings(embeddings, batch)

    def training_embeddings(self, batch: dict) -> Embeddings:
        """The embeddings the loss needs, each ``(B, ...)`` with one row per sample.

        Computed for a chunk of the batch at a time under gradient caching: it must not mix
        samples other than through normalisation layers, and must have no side effect but
        BatchNorm's (it runs twice per chunk).
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement training_loss(batch), or "
            "training_embeddings(batch) and loss_from_embeddings(embeddings, batch)"
        )

    def loss_from_embeddings(self, embeddings: Embeddings, batch: dict) -> Tensor:
        """The loss of the whole batch from :meth:`training_embeddings`' output (all chunks')."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss_from_embeddings")

    def _has_embedding_halves(self) -> bool:
        cls = type(self)
        return cls.training_embeddings is not ContrastiveMethod.training_embeddings

    # ---- views, embeddings, gathering -------------------------------------------------------

    def make_views(self, batch: dict) -> list[Tensor]:
        """The augmented views of each image, global views first (:meth:`Augment.views`).

        The sources are ``image`` and the generator's ``view`` if the data gives one (else
        ``image`` twice): two views with a plain :class:`Augment`, two global and ``K`` local
        ones with :class:`~contrastive.augment.MultiCropAugment`. Each is ``(B, C, H, W)``.
        """
        sources = [batch["image"], batch.get("view", batch["image"])]
        return [self._memory_format(v) for v in self.augment.views(sources)]

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if isinstance(batch, dict):
            self._skipped.add(batch.pop("skipped", ()))
        if self._trainer is not None and self.trainer.training and "image" in batch:
            batch["views"] = self.make_views(batch)
            if not self._views_checked:
                self._views_checked = True
                self._warn_if_views_identical(batch["views"])
        return batch

    def _warn_if_views_identical(self, views: list[Tensor]) -> None:
        """Warn, on the first training batch, when its two views are the same images."""
        if len(views) > 1 and views[0].shape == views[1].shape and torch.equal(*views[:2]):
            rank_zero_warn(
                "the two views of each training image are identical: the data gives no "
                "generator view ('view') and model.augment does not change the images, so the "
                "loss has nothing to learn; set model.augment (e.g. "
                "contrastive.augment.SimCLRAugment) or the data's views (data.shared_factors "
                "for ShapesDataModule)"
            )

    @property
    def tokenizer(self) -> Tokenizer | None:
        """What turns captions into the text tower's input; ``None`` for image-only methods.

        In ``setup`` it is handed to the data module (``datamodule.tokenizer``), whose loaders
        then tokenize in their worker processes.
        """
        return None

    def _report_skipped(self, where: str) -> None:
        summary = self._skipped.summary(where)
        if summary is not None:
            rank = f"rank {distributed.rank()} " if distributed.is_distributed() else ""
            warnings.warn(rank + summary, stacklevel=1)
        self._skipped.reset()

    def on_train_epoch_end(self) -> None:
        self._report_skipped(f"train epoch {self.current_epoch}")

    def embed(self, images: Tensor) -> Tensor:
        """The representation of images for downstream use.

        Args:
            images: ``(B, C, H, W)`` uint8, or float in [0, 1].

        Returns:
            ``(B, num_features)`` backbone features (before any projection head).
        """
        return self.represent(self._memory_format(self.augment.normalize(images)))

    def represent(self, views: Tensor) -> Tensor:
        """The representation of normalised float images: the backbone's features by default."""
        return self.backbone(views)

    def gather(
        self, embeddings: Tensor, labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Embeddings and labels from every rank, and where this rank's rows sit among them.

        For losses over the global batch (batch statistics, a cross-correlation, negatives
        from every rank): every rank computes the loss of the gathered rows, and the gradient
        reaching each rank's rows is summed over ranks, so with DDP's gradient averaging the
        update is that of one process on the concatenated batch.

        Args:
            embeddings: ``(N, D)`` this rank's embeddings.
            labels: ``(N,)`` their labels (image ids or classes); ``None`` for none.

        Returns:
            ``(M, D)`` candidates with gradient (``M`` rows from all ranks), their ``(M,)``
            labels (``None`` without labels), and the ``(N,)`` positions of the local rows
            among them. Without ``gather_negatives`` or on one process: the inputs themselves
            and ``arange(N)``.
        """
        if not self.gather_negatives or not distributed.is_distributed():
            return embeddings, labels, torch.arange(len(embeddings), device=embeddings.device)
        gathered = distributed.gather_with_grad(embeddings)
        gathered_labels = None if labels is None else distributed.gather_no_grad(labels)
        return gathered, gathered_labels, self.global_ids(len(embeddings))

    def info_nce(
        self,
        z: Tensor,
        labels: Tensor,
        temperature: float | Tensor,
        tiling: Tiling | None = None,
        queue: EmbeddingQueue | None = None,
        keys: Tensor | None = None,
    ) -> Tensor:
        """InfoNCE of this rank's embeddings against the gathered batch; same label = positive.

        Args:
            z: ``(N, D)`` embeddings (e.g. both views of each image).
            labels: ``(N,)`` labels (image ids repeated per view, or classes).
            temperature: the softmax temperature.
            tiling: when to use :func:`info_nce_tiled` instead of the dense loss.
            queue: past embeddings as extra negatives (never positives). The candidates are
                pushed after the loss (detached): the global batch with ``gather_negatives``,
                so that every rank holds the same queue.
            keys: ``(N, D)`` candidates other than ``z``, labelled by ``labels`` too (another
                view's embeddings, a momentum encoder's keys): ``z`` is classified among the
                gathered keys, and is not among its own candidates. ``None``: ``z`` itself.
        """
        candidates, candidate_labels, positions = self.gather(z if keys is None else keys, labels)
        if keys is not None:
            positions = None  # the anchors are not among the candidates
        negatives = None if queue is None else queue.negatives()  # (K, D)
        args = (z, candidates, labels, candidate_labels, temperature, positions)
        columns = len(candidates) + (0 if negatives is None else len(negatives))
        block_size = None if tiling is None else tiling.block_size(columns)
        if block_size is not None:
            loss = info_nce_tiled(*args, block_size=block_size, negatives=negatives)
        else:
            loss = info_nce(*args, negatives=negatives)
        if queue is not None:
            queue.push(candidates)
        return loss

    def global_ids(self, n: int) -> Tensor:
        """``(n,)`` ids of this rank's rows, unique across ranks (rank-major, as gathered)."""
        return distributed.offset(n, self.device) + torch.arange(n, device=self.device)

    def _memory_format(self, images: Tensor) -> Tensor:
        return (
            images.contiguous(memory_format=torch.channels_last) if self.channels_last else images
        )

    # ---- training ---------------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        if "image" not in batch:  # every sample of the batch was skipped
            # A zero loss on every trainable parameter rather than None: under DDP the other
            # ranks still reach backward's gradient sync with this one.
            return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        loss = self.training_loss(batch)
        # All ranks stop together: one rank raising alone would leave the others waiting.
        finite = self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)))
        if not finite:
            # This step's weights gave the bad loss: the good checkpoint is an earlier step's.
            good = good_checkpoint(self.trainer, self.global_step - 1)
            raise NonFiniteError(
                f"loss is {loss.item()} at step {self.global_step} (epoch {self.current_epoch}); "
                f"training stopped before the update; last good checkpoint: {good}"
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        """Lightning's step, then a check that the updated weights are finite.

        A huge learning rate can leave finite losses and weights of 1e30 whose next forward is
        NaN; checking after each update keeps such weights out of every checkpoint (checkpoints
        are written after the step). Weights are the same on every rank, so all ranks stop
        together.
        """
        step = self.global_step
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if not weights_finite([p for group in optimizer.param_groups for p in group["params"]]):
            raise NonFiniteError(
                f"weights are not finite after the update of step {step} (epoch {epoch}); "
                f"training stopped, no checkpoint written from them; last good checkpoint: "
                f"{good_checkpoint(self.trainer, step)}"
            )

    def configure_optimizers(self) -> dict:
        decay, no_decay = [], []
        for param in self.parameters():
            if param.requires_grad:
                (no_decay if param.ndim <= 1 else decay).append(param)
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = self.optimizer([g for g in groups if g["params"]])
        total = self.trainer.estimated_stepping_batches
        if math.isinf(total):
            raise ValueError(
                "the cosine schedule needs a length: set trainer.max_epochs or max_steps"
            )
        if self.trainer.train_dataloader is None:  # max_steps alone does not load the data
            self.trainer.fit_loop.setup_data()
        batches = self.trainer.num_training_batches
        if math.isinf(batches) and self.warmup_epochs > 0:
            raise ValueError("warmup_epochs needs a training loader with a length")
        per_epoch = 0 if math.isinf(batches) else batches / self.trainer.accumulate_grad_batches
        total = max(1, int(total))
        warmup = min(total - 1, round(self.warmup_epochs * per_epoch))
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warmup)
        schedule = cosine
        if warmup > 0:
            # lr * (k + 1) / warmup at step k: the full rate is reached on the last warmup step.
            ramp = torch.optim.lr_scheduler.LinearLR(
                optimizer, start_factor=1.0 / warmup, total_iters=max(1, warmup - 1)
            )
            schedule = torch.optim.lr_scheduler.SequentialLR(
                optimizer, [ramp, cosine], milestones=[warmup]
            )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ---- evaluation -------------------------------------------------------------------------
    # Evaluation data modules return two loaders: [bank, query]. The bank (training images, no
    # augmentation) is the kNN memory; the queries (held-out images) are classified against it
    # per attribute, and their embeddings measured for uniformity and effective rank.

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.tokenizer is not None and hasattr(datamodule, "tokenizer"):
            datamodule.tokenizer = self.tokenizer
        self.eval_num_classes = dict(getattr(datamodule, "num_classes", None) or {})
        num_classes = list(self.eval_num_classes.values())
        self.knn = (
            KNNAccuracy(num_classes, self.knn_k, self.knn_temperature) if num_classes else None
        )
        self.knn_random = copy.deepcopy(self.knn) if stage == "test" else None
        self.alignment = Alignment()
        self.uniformity = Uniformity()
        # Centred: post-ReLU features share a large mean that would read as rank ~1.
        self.effective_rank = EffectiveRank(center=True)
        self.embedding_std = EmbeddingStd()

    def _labels(self, batch: dict) -> Tensor:
        return torch.stack([batch["labels"][a] for a in self.eval_num_classes], dim=1)  # (B, A)

    def is_query_loader(self, dataloader_idx: int) -> bool:
        """Whether evaluation loader ``dataloader_idx`` holds queries: the second of
        ``[bank, query]``, or the only loader of a data module without a kNN bank."""
        stage = "test" if self.trainer.testing else "val"
        loaders = getattr(self.trainer, f"num_{stage}_batches", None) or [0]
        return dataloader_idx == 1 or len(loaders) == 1

    def _eval_step(
        self, batch: dict, dataloader_idx: int, random_init: nn.Module | None
    ) -> dict[str, Tensor] | None:
        """Update the metrics with one evaluation batch.

        Returns:
            For a query batch, its features: ``{"trained": (B, D)}``, plus ``"random"`` when a
            random-init backbone is given, for subclasses' own metrics; ``None`` otherwise.
        """
        if "image" not in batch:  # every sample of the batch was skipped
            return None
        normalized = self._memory_format(self.augment.normalize(batch["image"]))
        features = {"trained": self.represent(normalized)}  # (B, D), as embed() gives
        encoders = [(self.knn, features["trained"])]
        if random_init is not None:
            features["random"] = random_init(normalized)
            encoders.append((self.knn_random, features["random"]))
        query = self.is_query_loader(dataloader_idx)
        if self.knn is not None and "labels" in batch:
            labels = self._labels(batch)
            for knn, feats in encoders:
                (knn.update if query else knn.update_bank)(feats, labels)
        if not query:
            return None
        for metric in (self.uniformity, self.effective_rank, self.embedding_std):
            metric.update(features["trained"])
        view1, view2 = (self._memory_format(self.augment(batch["image"])) for _ in range(2))
        self.alignment.update(self.represent(view1), self.represent(view2))
        return features

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx, random_init=None)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx, random_init=self._random_backbone[0])

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self.embed(batch["image"])

    def on_test_start(self) -> None:
        # The same architecture at random init, seeded, as the baseline of the report. Kept out
        # of the module tree so it is neither saved nor expected in checkpoints.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            random_init = create_backbone(self.hparams.backbone, **self._random_init_kwargs())
        self._random_backbone = [random_init.to(self.device).eval()]

    def _random_init_kwargs(self) -> dict:
        kwargs = dict(self.hparams.backbone_kwargs or {})
        kwargs.pop("checkpoint", None)
        kwargs.pop("pretrained", None)
        return kwargs

    def _log_embedding_metrics(self, stage: str) -> dict[str, float]:
        results = {}
        if self.knn is not None and self.knn.update_count > 0:
            for name, acc in zip(
                self.eval_num_classes, self.knn.compute().reshape(-1), strict=True
            ):
                results[f"{stage}/knn/{name}"] = acc.item()
        if self.effective_rank.update_count > 0:
            rank = self.effective_rank.compute()
            results[f"{stage}/effective_rank"] = rank.item()
            results[f"{stage}/uniformity"] = self.uniformity.compute().item()
            results[f"{stage}/alignment"] = self.alignment.compute().item()
            results[f"{stage}/embedding_std"] = self.embedding_std.compute().item()
            dim = self.effective_rank.gram.shape[0]
            threshold = max(2.0, self.collapse_rank_fraction * dim)  # rank ~1: one point
            if rank < threshold:
                rank_zero_warn(
                    f"embedding collapse: effective rank {rank:.1f} of {dim} dimensions at step "
                    f"{self.global_step} (warning below {threshold:.1f})"
                )
        metrics = (
            self.knn,
            self.alignment,
            self.uniformity,
            self.effective_rank,
            self.embedding_std,
        )
        for metric in metrics:
            if metric is not None:
                metric.reset()
        self.log_dict(results)
        return results

    def on_validation_epoch_end(self) -> None:
        self._report_skipped(f"validation at step {self.global_step}")
        self._log_embedding_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._report_skipped("test")
        trained = self._log_embedding_metrics("test")
        if self.knn_random is None or self.knn_random.update_count == 0:
            return
        random_acc = self.knn_random.compute().reshape(-1)  # 0-d for one attribute
        self.knn_random.reset()
        names = list(self.eval_num_classes)
        self.log_dict({f"test/knn_random/{a}": v for a, v in zip(names, random_acc, strict=True)})
        rows = [
            (name, n, 1 / n, random_acc[i].item(), trained[f"test/knn/{name}"])
            for i, (name, n) in enumerate(self.eval_num_classes.items())
        ]
        if self.trainer.is_global_zero:
            print(knn_report(rows, self.knn_k))


def weights_finite(tensors: list[Tensor]) -> bool:
    """Whether every tensor is finite, in one fused reduction and one host sync.

    The sum of the tensors' L2 norms (``torch._foreach_norm``: one kernel per device and dtype)
    is finite only when every element is, and when no tensor is so large that its squares
    overflow (weights of 1e30 in float32: finite, but their next forward is not).
    """
    if not tensors:
        return True
    return bool(torch.stack(torch._foreach_norm(tensors)).sum().isfinite())


def forward_views(
    network: Callable[[Tensor], Tensor], views: list[Tensor], separate: bool = False
) -> Tensor:
    """``network`` of every view, stacked view by view: ``(V * B, ...)``.

    ``separate``: one forward per view, so that each view is its own BatchNorm batch (as in
    BYOL's and lightly's code); otherwise one forward of all views of a size together,
    BatchNorm over them (as in the SimCLR paper; multi-crop's global and local views are two
    forwards, as in DINO's and SwAV's code). On a 2-core CPU two batches of B ran 5% faster
    than one of 2B (BENCHMARKS.md). In eval mode the two agree.
    """
    if separate:
        return torch.cat([network(v) for v in views])
    groups: list[list[Tensor]] = []  # runs of consecutive views of one size
    for view in views:
        if groups and groups[-1][0].shape[1:] == view.shape[1:]:
            groups[-1].append(view)
        else:
            groups.append([view])
    return torch.cat([network(torch.cat(group)) for group in groups])


def knn_report(rows: list[tuple[str, int, float, float, float]], k: int) -> str:
    """The "what does the embedding know" table.

    Args:
        rows: (attribute, classes, chance, random-init accuracy, trained accuracy) per attribute.
        k: the kNN's number of neighbours, for the title.
    """
    lines = [
        f"What the embedding knows: kNN top-1 (k={k}) per attribute, test split",
        f"{'attribute':<12}{'classes':>8}{'chance':>8}{'random init':>13}{'trained':>9}{'gain':>8}",
    ]
    for name, n, chance, random_acc, trained in rows:
        lines.append(
            f"{name:<12}{n:>8}{chance:>8.3f}{random_acc:>13.3f}{trained:>9.3f}"
            f"{trained - random_acc:>+8.3f}"
        )
    return "\n".join(lines)
