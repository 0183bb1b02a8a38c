"""Data modules: one data source each."""

from contrastive.datamodules.imagefolder import ImageFolderDataModule, ImageFolderDataset
from contrastive.datamodules.shapes import ShapesDataModule, ShapesDataset
from contrastive.datamodules.vision_sets import VisionSetDataModule

__all__ = [
    "ImageFolderDataModule",
    "ImageFolderDataset",
    "ShapesDataModule",
    "ShapesDataset",
    "VisionSetDataModule",
]
