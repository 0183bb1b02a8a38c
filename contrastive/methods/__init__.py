"""Methods: one LightningModule each, all subclasses of :class:`ContrastiveMethod`."""

from contrastive.methods.base import ContrastiveMethod, NonFiniteLossError
from contrastive.methods.byol import BYOL
from contrastive.methods.clip import CLIP
from contrastive.methods.conditional import Conditional
from contrastive.methods.simclr import SimCLR
from contrastive.methods.supcon import SupCon

__all__ = [
    "BYOL",
    "CLIP",
    "Conditional",
    "ContrastiveMethod",
    "NonFiniteLossError",
    "SimCLR",
    "SupCon",
]
