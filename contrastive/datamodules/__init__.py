"""Data modules: one data source each."""

from contrastive.datamodules.image_text import ImageTextDataModule
from contrastive.datamodules.imagefolder import ImageFolderDataModule, ImageFolderDataset
from contrastive.datamodules.nga import NGADataModule, NGADataset
from contrastive.datamodules.shape_triplets import ShapesTripletDataModule, ShapesTripletDataset
from contrastive.datamodules.shapes import ShapesDataModule, ShapesDataset
from contrastive.datamodules.triplets import TripletManifestDataModule
from contrastive.datamodules.vision_sets import VisionSetDataModule

__all__ = [
    "ImageFolderDataModule",
    "ImageFolderDataset",
    "ImageTextDataModule",
    "NGADataModule",
    "NGADataset",
    "ShapesDataModule",
    "ShapesDataset",
    "TripletManifestDataModule",
    "ShapesTripletDataModule",
    "ShapesTripletDataset",
    "VisionSetDataModule",
]
