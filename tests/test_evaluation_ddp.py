"""The evaluation callbacks in a real 2-process DDP Trainer (CPU, gloo) give the figures of one
process on the same data: every metric is synced, and rows are put back in dataset order."""

import os

import pytest
import torch
from lightning.pytorch import Trainer

from contrastive.datamodules import ShapesDataModule
from contrastive.evaluation import EmbeddingProjector, EmbeddingReport
from contrastive.methods import SimCLR
from tests.ddp import run_ddp


def _test_figures(rank: int, world_size: int, root: str) -> dict[str, float]:
    if world_size > 1:  # the processes exist already, as under torchrun
        os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE=str(world_size))
        os.environ["NODE_RANK"] = "0"
    torch.manual_seed(1)  # not the random-init baseline's seed
    model = SimCLR(backbone_kwargs={"width": 4}, projector_hidden_dim=16)
    data = ShapesDataModule(
        num_train=64, num_test=40, num_bank=64, batch_size=16, eval_batch_size=8
    )
    trainer = Trainer(
        accelerator="cpu",
        devices=world_size,
        strategy="ddp" if world_size > 1 else "auto",
        logger=False,
        callbacks=[EmbeddingReport(probe_max_iter=30), EmbeddingProjector(num_samples=16)],
        default_root_dir=root,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.validate(model, data, verbose=False)  # the projector's pictures, on rank 0
    return {k: float(v) for k, v in trainer.test(model, data, verbose=False)[0].items()}


def test_the_embedding_report_on_two_processes_equals_one_process(tmp_path):
    expected = _test_figures(0, 1, str(tmp_path / "one"))
    assert any(key.startswith("test/linear/") for key in expected)
    for figures in run_ddp(_test_figures, str(tmp_path / "two")):
        for key, value in expected.items():
            if key != "test/alignment":  # random views: each process draws its own
                assert figures[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    assert (tmp_path / "two" / "test_report.png").is_file()
    assert (tmp_path / "two" / "projector" / "neighbours_step0.png").is_file()
