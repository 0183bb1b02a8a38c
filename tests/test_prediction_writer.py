"""``contrastive predict`` writes the embeddings and their ids into the run folder."""

import json
from pathlib import Path

import numpy as np
import pytest

from contrastive.cli import main

CONFIG = str(Path(__file__).parents[1] / "configs" / "simclr.yaml")
TINY = [
    f"--config={CONFIG}",
    "--data.num_train=32",
    "--data.num_val=16",
    "--data.num_test=24",
    "--data.num_bank=32",
    "--data.batch_size=16",
    "--data.eval_batch_size=16",
    "--model.backbone_kwargs={width: 4}",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_predict_writes_the_test_splits_embeddings_and_ids_without_overwriting():
    main(["fit", *TINY, "--trainer.max_steps=1", "--trainer.limit_val_batches=0"])
    main(["predict", *TINY, "--ckpt_path=last"])
    run = Path("runs/simclr/version_0")
    embeddings = np.load(run / "predict" / "embeddings.npy")
    ids = [json.loads(line) for line in (run / "predict" / "ids.txt").read_text().splitlines()]
    assert embeddings.shape == (24, 4 * 8) and embeddings.dtype == np.float32
    assert ids == list(range(24))  # the shapes test split, row i is item i
    main(["predict", *TINY, "--ckpt_path=last"])
    assert (run / "predict_1" / "embeddings.npy").is_file()
    np.testing.assert_array_equal(np.load(run / "predict" / "embeddings.npy"), embeddings)


def test_the_writer_works_with_any_logger(tmp_path):
    import torch
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger

    from contrastive.datamodules import ShapesDataModule
    from contrastive.evaluation import EmbeddingWriter
    from contrastive.methods import SimCLR

    model = SimCLR(backbone_kwargs={"width": 4}, projector_hidden_dim=16)
    data = ShapesDataModule(num_train=32, num_test=20, batch_size=16, eval_batch_size=8)
    logger = CSVLogger(tmp_path, name="run")
    trainer = Trainer(logger=logger, callbacks=[EmbeddingWriter()], enable_progress_bar=False)
    predictions = trainer.predict(model, data)
    written = np.load(Path(logger.log_dir) / "predict" / "embeddings.npy")
    np.testing.assert_allclose(written, torch.cat(predictions).numpy())
