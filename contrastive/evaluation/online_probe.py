"""The online linear probe: linear classifiers trained beside the method on detached features.

As solo-learn's and lightly's online classifiers: at every training batch, the method's
``embed`` of the batch's images (eval mode, without a graph, so no gradient reaches the backbone
and no BatchNorm statistic moves) trains one linear classifier per label field, with its own
optimizer; at every validation each is scored on the query split (``val/linear/<field>``), with
an exponential moving average of its weights (Polyak averaging: the iterate of a constant
learning rate wanders around the optimum; its average lies nearer). A
``BatchNorm1d`` without affine parameters standardises the features first (as MAE's linear
probing), so one learning rate suits any feature scale. Under DDP the features and labels of
every rank are gathered and every rank takes the same step on the global batch, so the probes
stay identical and equal to one process's on the concatenated batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from contrastive import distributed
from contrastive.datamodules.common import DataError, check_evaluation_data
from contrastive.evaluation.callback import log_results, stacked_labels, step_embedding
from contrastive.evaluation.zero_shot import zero_shot_metric as accuracy_metric


class OnlineLinearProbe(Callback):
    """A linear classifier per label field, trained during fit on the frozen, detached
    ``embed`` of each training batch; its query accuracy logged at every validation.

    Args:
        lr: the probes' learning rate (AdamW, on standardised features). 3e-2 rather than the
            usual 1e-3: the features move under the probe while the method trains, and on the
            shapes features 1e-3 was still short of the offline probe after 60 epochs.
        weight_decay: the probes' weight decay.
        seed: seed of the probes' initialisation.
        ema: decay of the average of the probes' weights that is scored (``0``: the last
            weights). Its horizon, ``1 / (1 - ema)`` steps (100 by default), should be short
            beside the training (the features move) and long beside the noise of one step. At
            the end of configs/simclr_long.yaml the largest gap to the offline probe was 0.037
            without it (lr 1e-2) and 0.004 with it (lr 3e-2; BENCHMARKS.md).
    """

    def __init__(
        self, lr: float = 3e-2, weight_decay: float = 0.0, seed: int = 0, ema: float = 0.99
    ) -> None:
        if lr <= 0 or weight_decay < 0 or not 0 <= ema < 1:
            raise ValueError(
                f"need lr > 0, weight_decay >= 0 and 0 <= ema < 1, got {lr}, {weight_decay}, {ema}"
            )
        self.lr, self.weight_decay, self.seed, self.ema = lr, weight_decay, seed, ema
        self.fields: dict[str, int] = {}
        self.probes: nn.ModuleDict | None = None
        self.averaged: AveragedModel | None = None  # the scored probes
        self.optimizer: torch.optim.Optimizer | None = None
        self.metrics = nn.ModuleDict()
        self._pending: dict | None = None  # a checkpoint's probe state, until the probes exist

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "predict":
            return
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None:
            raise DataError("OnlineLinearProbe needs a data module (not bare dataloaders)")
        self.data = check_evaluation_data(datamodule)
        self.fields = dict(self.data.num_classes)

    def build(self, dim: int, device: torch.device) -> None:
        """The probes for ``dim``-wide features, and their optimizer. Their initialisation is
        seeded apart from the global random state: every rank builds the same probes, and the
        method's own random draws (views, dropout) are not moved by them."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.probes = nn.ModuleDict(
                {
                    field: nn.Sequential(nn.BatchNorm1d(dim, affine=False), nn.Linear(dim, n))
                    for field, n in self.fields.items()
                }
            ).to(device)
        # The weights are averaged, not the BatchNorm's running statistics: the scored probe
        # standardises with the current ones (an average would keep a trace of the first
        # steps' statistics, far from the features', for 1 / (1 - ema) steps and more).
        self.averaged = AveragedModel(self.probes, multi_avg_fn=get_ema_multi_avg_fn(self.ema))
        self.optimizer = torch.optim.AdamW(
            self.probes.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )
        if self._pending is not None:
            self.probes.load_state_dict(self._pending["probes"])
            if "averaged" in self._pending:  # absent from checkpoints written before it
                self.averaged.load_state_dict(self._pending["averaged"])
            else:
                self.averaged.module.load_state_dict(self._pending["probes"])
            self.optimizer.load_state_dict(self._pending["optimizer"])
            self._pending = None

    def step(self, features: Tensor, labels: Tensor) -> Tensor:
        """One optimizer step of every probe on ``(B, D)`` features and ``(B, A)`` labels,
        gathered from every rank first; returns the mean cross-entropy (a detached scalar)."""
        features = distributed.gather_no_grad(features.detach().float())  # (N, D) global
        labels = distributed.gather_no_grad(labels)  # (N, A)
        if self.probes is None:
            self.build(features.shape[1], features.device)
        self.probes.train()
        with torch.inference_mode(False), torch.enable_grad():
            x, y = features.clone(), labels.clone()  # normal tensors, for autograd
            loss = sum(
                F.cross_entropy(probe(x), y[:, i]) for i, probe in enumerate(self.probes.values())
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.averaged.update_parameters(self.probes)
            current = zip(self.averaged.module.buffers(), self.probes.buffers(), strict=True)
            for mine, theirs in current:
                mine.copy_(theirs)
        return loss.detach() / len(self.fields)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        labels = stacked_labels(batch, list(self.fields)) if isinstance(batch, dict) else None
        usable = labels is not None and "image" in batch  # not a batch of skipped samples
        # Every rank steps together (the features are gathered) or none does.
        if not trainer.strategy.reduce_boolean_decision(usable, all=True):
            return
        was_training = pl_module.training
        pl_module.eval()  # no BatchNorm statistic moves, no dropout
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            features = pl_module.embed(batch["image"])  # (B, D), no graph: no gradient back
        pl_module.train(was_training)
        loss = self.step(features, labels)
        pl_module.log("train/linear_loss", loss, batch_size=len(labels))

    def _start(self, pl_module: LightningModule) -> None:
        if self.probes is None and self._pending:  # restored from a checkpoint to test
            dim = self._pending["probes"][f"{next(iter(self.fields))}.1.weight"].shape[1]
            self.build(dim, pl_module.device)
        self.metrics = nn.ModuleDict(
            {field: accuracy_metric(n) for field, n in self.fields.items()}
        ).to(pl_module.device)

    def _query(self, trainer, pl_module, outputs, batch, dataloader_idx: int) -> None:
        if self.probes is None or dataloader_idx != self.data.query_loader:
            return
        labels = stacked_labels(batch, list(self.fields)) if "image" in batch else None
        if labels is None:
            return
        features = step_embedding(pl_module, outputs, batch).float()
        self.averaged.eval()
        for i, (field, probe) in enumerate(self.averaged.module.items()):
            self.metrics[field].update(probe(features), labels[:, i])

    def _finish(self, pl_module: LightningModule, stage: str) -> None:
        results = {
            f"{stage}/{field}": metric.compute().item()
            for field, metric in self.metrics.items()
            if metric.update_count > 0
        }
        log_results(pl_module, results)
        self.metrics = nn.ModuleDict()

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(pl_module)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._query(trainer, pl_module, outputs, batch, dataloader_idx)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish(pl_module, "val/linear")

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(pl_module)

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._query(trainer, pl_module, outputs, batch, dataloader_idx)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Beside the offline probe's test/linear/<field>: how far the online probe got.
        self._finish(pl_module, "test/linear_online")

    def state_dict(self) -> dict[str, Any]:
        if self.probes is None:
            return self._pending or {}
        return {
            "probes": self.probes.state_dict(),
            "averaged": self.averaged.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._pending, self.probes = state_dict, None  # built at the first batch, then loaded
