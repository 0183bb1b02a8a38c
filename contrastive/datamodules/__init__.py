"""Data modules: one data source each."""

from contrastive.datamodules.shapes import ShapesDataModule, ShapesDataset

__all__ = ["ShapesDataModule", "ShapesDataset"]
