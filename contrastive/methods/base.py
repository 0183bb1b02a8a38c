"""The base LightningModule every method subclasses: the backbone from the registry, the views
made on the device, the optimizer and schedule (``optim.py``), ``embed()``, gathering across
ranks, the non-finite guards and the skipped-sample reports. A subclass builds its heads in
``__init__`` and implements ``training_loss``, or its halves ``training_embeddings`` and
``loss_from_embeddings`` (which give it gradient caching, ``gradcache.py``). Evaluation is not
here: the callbacks of :mod:`contrastive.evaluation` judge any method through ``embed()``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from contrastive.augment import Augment
from contrastive.backbones import create_backbone
from contrastive.checkpoint_io import good_checkpoint
from contrastive.checkpoints import name_method_class
from contrastive.datamodules.common import StageSkipReports, Tokenizer
from contrastive.gradcache import Embeddings, check_chunk_size, embed_in_chunks
from contrastive.methods.global_batch import GlobalBatch
from contrastive.optim import parameter_groups, warmup_cosine, weights_finite


class NonFiniteError(RuntimeError):
    """The loss or the weights stopped being finite; training stops and no checkpoint is written
    from them. The message names the newest step checkpoint that is good to resume from."""


class ContrastiveMethod(GlobalBatch, LightningModule):
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
        channels_last: move images to channels-last memory format (faster convolutions with
            bf16 on recent CPUs and GPUs).
        chunk_size: embed each training batch in chunks of this many samples with gradient
            caching (``gradcache.py``): the loss and gradients of the whole batch in one chunk's
            activation memory (exact without BatchNorm), for one extra forward pass; needs
            :meth:`training_embeddings` and :meth:`loss_from_embeddings`. ``None``: at once.
    """

    def __init__(
        self,
        backbone: str = "small_cnn",
        backbone_kwargs: dict | None = None,
        augment: Augment | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        warmup_epochs: float = 0.0,
        gather_negatives: bool = True,
        channels_last: bool = False,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        # From LightningCLI the hyper-parameters are the config (class paths and init args), kept
        # whole; from Python only the plain values (modules' weights are in the state_dict).
        modules = ["augment", "optimizer", "text_tower"]
        self.save_hyperparameters(ignore=[] if _given_hyperparameters.get() else modules)
        self.backbone = create_backbone(backbone, **(backbone_kwargs or {}))
        self.augment = augment if augment is not None else Augment()
        self.augment.use_backbone_stats(self.backbone.preprocessing)  # unless given its own
        self.optimizer, self.warmup_epochs = optimizer, warmup_epochs
        self.gather_negatives, self.channels_last = gather_negatives, channels_last
        self.chunk_size = check_chunk_size(chunk_size)
        if chunk_size is not None and not self._has_embedding_halves():
            raise ValueError(
                f"chunk_size needs {type(self).__name__} to implement training_embeddings and "
                "loss_from_embeddings (it implements training_loss only)"
            )
        self._skipped = StageSkipReports()
        self._views_checked = False

    # ---- what a subclass implements ---------------------------------------------------------

    def training_loss(self, batch: dict) -> Tensor:
        """The loss of one training batch; ``batch["views"]`` holds the augmented views. By
        default :meth:`loss_from_embeddings` of :meth:`training_embeddings`, in chunks of
        ``chunk_size`` samples with gradient caching when it is set."""
        embeddings = embed_in_chunks(self.training_embeddings, batch, self.chunk_size, self)
        return self.loss_from_embeddings(embeddings, batch)

    def training_embeddings(self, batch: dict) -> Embeddings:
        """The embeddings the loss needs, each ``(B, ...)`` with one row per sample. Under
        gradient caching it runs twice per chunk of the batch: it must not mix samples but
        through normalisation layers, and have no side effect but BatchNorm's."""
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
        """The augmented ``(B, C, H, W)`` views of ``image`` and of the generator's ``view``
        (else ``image`` again): two with a plain :class:`Augment`, two global and ``K`` local
        ones with :class:`~contrastive.augment.MultiCropAugment` (:meth:`Augment.views`)."""
        sources = [batch["image"], batch.get("view", batch["image"])]
        return [self._memory_format(v) for v in self.augment.views(sources)]

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if isinstance(batch, dict) and self._trainer is not None:
            self._skipped.add(self.trainer, batch.pop("skipped", ()))
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
        """What turns captions into the text tower's input (``None``: no text), handed to the
        data module in ``setup`` so that its loaders tokenize in their worker processes."""
        return None

    def on_train_epoch_end(self) -> None:
        self._skipped.report("train", f"train epoch {self.current_epoch}")

    def on_validation_epoch_end(self) -> None:
        self._skipped.report("validation", f"validation at step {self.global_step}")

    def on_test_epoch_end(self) -> None:
        self._skipped.report("test", "test")

    def on_predict_epoch_end(self) -> None:
        self._skipped.report("predict", "predict")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        name_method_class(self, checkpoint)  # built in Python: every command can rebuild it

    def embed(self, images: Tensor) -> Tensor:
        """The representation of uint8 (or [0, 1] float) images ``(B, C, H, W)`` for downstream
        use and evaluation: the backbone's ``(B, num_features)`` by default (before any head)."""
        return self.backbone(self._memory_format(self.augment.normalize(images)))

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
        """Lightning's step, then a check that the updated weights are finite: a huge learning
        rate can leave weights of 1e30 whose next forward is NaN, and checkpoints are written
        after the step. Weights are the same on every rank, so all ranks stop together."""
        step = self.global_step
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if not weights_finite([p for group in optimizer.param_groups for p in group["params"]]):
            raise NonFiniteError(
                f"weights are not finite after the update of step {step} (epoch {epoch}); "
                f"training stopped, no checkpoint written from them; last good checkpoint: "
                f"{good_checkpoint(self.trainer, step)}"
            )

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer(parameter_groups(self))
        return warmup_cosine(optimizer, self.trainer, self.warmup_epochs)

    # ---- evaluation: the callbacks of contrastive.evaluation read {"embedding": embed(images)}

    def setup(self, stage: str) -> None:
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        if self.tokenizer is not None and hasattr(datamodule, "tokenizer"):
            datamodule.tokenizer = self.tokenizer

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict | None:
        return {"embedding": self.embed(batch["image"])} if "image" in batch else None

    test_step = validation_step

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self.embed(batch["image"])


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
