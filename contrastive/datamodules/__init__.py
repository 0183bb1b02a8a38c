"""Data modules: one data source each."""

from contrastive.datamodules.font_triplets import FontTripletDataModule, FontTripletDataset
from contrastive.datamodules.fonts import FontsDataModule, FontsDataset
from contrastive.datamodules.genecis import GeneCISDataModule, GeneCISDataset
from contrastive.datamodules.image_text import ImageTextDataModule
from contrastive.datamodules.imagefolder import ImageFolderDataModule, ImageFolderDataset
from contrastive.datamodules.nga import NGADataModule, NGADataset
from contrastive.datamodules.shape_triplets import ShapesTripletDataModule, ShapesTripletDataset
from contrastive.datamodules.shapes import ShapesDataModule, ShapesDataset
from contrastive.datamodules.triplets import TripletManifestDataModule
from contrastive.datamodules.vision_sets import VisionSetDataModule

__all__ = [
    "FontTripletDataModule",
    "FontTripletDataset",
    "FontsDataModule",
    "FontsDataset",
    "GeneCISDataModule",
    "GeneCISDataset",
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
