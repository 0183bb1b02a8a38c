"""Methods: one LightningModule each, all subclasses of :class:`ContrastiveMethod`."""

from contrastive.methods.barlow_twins import BarlowTwins
from contrastive.methods.base import ContrastiveMethod, NonFiniteError
from contrastive.methods.byol import BYOL
from contrastive.methods.clip import CLIP
from contrastive.methods.conditional import Conditional
from contrastive.methods.dino import DINO
from contrastive.methods.moco_v2 import MoCoV2
from contrastive.methods.moco_v3 import MoCoV3
from contrastive.methods.momentum import MomentumMethod
from contrastive.methods.nnclr import NNCLR
from contrastive.methods.registry import image_methods, method_defaults, smoke_kwargs
from contrastive.methods.simclr import SimCLR
from contrastive.methods.simsiam import SimSiam
from contrastive.methods.supcon import SupCon
from contrastive.methods.swav import SwAV
from contrastive.methods.towers import TwoTowerMethod
from contrastive.methods.vicreg import VICReg

__all__ = [
    "BYOL",
    "CLIP",
    "DINO",
    "NNCLR",
    "BarlowTwins",
    "Conditional",
    "ContrastiveMethod",
    "MoCoV2",
    "MoCoV3",
    "MomentumMethod",
    "NonFiniteError",
    "SimCLR",
    "SimSiam",
    "SupCon",
    "SwAV",
    "TwoTowerMethod",
    "VICReg",
    "image_methods",
    "method_defaults",
    "smoke_kwargs",
]
