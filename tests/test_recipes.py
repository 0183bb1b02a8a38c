"""The reference recipes (configs/recipes/): each parses and trains a step through the real CLI,
on the shapes data with ``--data`` overridden and the heads made small, so a typo in a key, a
class path or a value fails here rather than on a GPU cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from contrastive.cli import main
from contrastive.methods.registry import SMOKE_SIZES

RECIPES = sorted((Path(__file__).parents[1] / "configs" / "recipes").glob("*/*.yaml"))
# Head sizes and queues made small where a recipe sets them (VICReg's 8192-wide expander alone
# would take seconds a step here): the smoke sizes, a queue of 4 batches, SupCon's class field.
SMALL = {**SMOKE_SIZES, "queue_size": 32, "label": "shape"}
SHAPES = [
    "--data=ShapesDataModule",
    "--data.image_size=32",
    "--data.num_workers=0",
    "--data.num_train=32",
    "--data.num_val=16",
    "--data.num_test=16",
    "--data.num_bank=16",
    "--data.batch_size=8",
    "--model.backbone=small_cnn",
    "--model.backbone_kwargs={width: 4}",
    "--trainer.precision=32",
    "--trainer.devices=1",
    "--trainer.max_steps=1",
    "--trainer.limit_val_batches=0",
    "--trainer.logger=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def test_every_setting_has_recipes():
    settings = {path.parent.name for path in RECIPES}
    assert settings == {"cifar", "imagenet100", "imagenet"}
    assert len(RECIPES) >= 25


@pytest.mark.parametrize("recipe", RECIPES, ids=[f"{p.parent.name}/{p.stem}" for p in RECIPES])
def test_a_recipe_parses_and_trains_on_the_shapes_data(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load(recipe.read_text())
    text = recipe.read_text()
    assert "NOT RUN HERE" in text and "top-1" in text  # the figure it was published with
    init = config["model"]["init_args"]
    small = [f"--model.{k}={v}" for k, v in SMALL.items() if k in init]
    augment = config["model"]["init_args"]["augment"]["init_args"]
    sizes = [f"--model.augment.init_args.{k}={v}" for k, v in (("size", 32), ("local_size", 16))]
    views = [arg for arg, key in zip(sizes, ("size", "local_size"), strict=True) if key in augment]
    main(["fit", f"--config={recipe}", *SHAPES, *small, *views])
