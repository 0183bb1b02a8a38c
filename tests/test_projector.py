"""The projector and the neighbour grid: in TensorBoard, and as PNGs with any other logger."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from contrastive.datamodules import ShapesDataModule
from contrastive.evaluation.projector import EmbeddingProjector, neighbour_grid, pca_2d
from contrastive.methods import SimCLR


def test_neighbour_grid_puts_the_nearest_bank_image_next_to_each_query():
    g = torch.Generator().manual_seed(0)
    bank = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8, generator=g)
    bank_features = torch.eye(5)
    queries, query_features = bank[[3, 1]], torch.eye(5)[[3, 1]] + 0.01
    grid = neighbour_grid(queries, query_features, bank, bank_features, k=2)
    # 2 rows x 3 tiles of 4 px with 2 px padding: (3, 2 + 2 * 6, 2 + 3 * 6)
    assert grid.shape == (3, 14, 20)
    first_neighbour = grid[:, 2:6, 8:12]  # row 0, tile 1
    assert torch.equal(first_neighbour, bank[3])


def _fit(logger, root) -> ShapesDataModule:
    model = SimCLR(backbone_kwargs={"width": 4}, projector_hidden_dim=16)
    data = ShapesDataModule(
        num_train=64, num_val=48, num_test=32, num_bank=64, batch_size=16, eval_batch_size=16
    )
    trainer = Trainer(
        max_steps=1,
        val_check_interval=1,
        num_sanity_val_steps=0,
        logger=logger,
        default_root_dir=root,
        callbacks=[EmbeddingProjector(num_samples=40, num_bank=32)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, data)
    return data


def test_projector_and_grid_are_logged_to_tensorboard(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="run")
    data = _fit(logger, tmp_path)
    log_dir = Path(logger.log_dir)
    tsv = next(log_dir.rglob("tensors.tsv"))
    assert len(tsv.read_text().splitlines()) == 40  # capped at num_samples
    metadata = next(log_dir.rglob("metadata.tsv")).read_text().splitlines()
    assert metadata[0].split("\t") == list(data.attributes) and len(metadata) == 41
    assert next(log_dir.rglob("sprite.png")).stat().st_size > 0
    events = EventAccumulator(str(log_dir))
    events.Reload()
    assert "val/nearest_neighbours" in events.Tags()["images"]


@pytest.mark.parametrize("logger", ["csv", None])
def test_without_tensorboard_the_pictures_are_pngs_in_the_run_folder(tmp_path, logger):
    logger = CSVLogger(tmp_path, name="run") if logger else False
    _fit(logger, tmp_path)
    folder = Path(logger.log_dir if logger else tmp_path) / "projector"  # or the root folder
    grid = Image.open(folder / "neighbours_step1.png")
    assert grid.size == (2 + 9 * 34, 2 + 8 * 34)  # 8 rows of a query and 8 neighbours
    scatter = Image.open(folder / "embedding_step1.png")
    assert scatter.size[0] > 300 and scatter.size[1] > 300  # a panel per attribute


def test_pca_2d_puts_the_widest_spread_on_the_first_axis():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g) * torch.tensor([5.0, 0.1, 2.0, 0.1, 0.1])
    points = pca_2d(x)
    assert points.shape == (200, 2)
    assert points[:, 0].std() > points[:, 1].std() > 1.0
    assert pca_2d(x[:1]).shape == (1, 2)
