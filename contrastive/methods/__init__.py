"""Methods: one LightningModule each, all subclasses of :class:`ContrastiveMethod`."""

from contrastive.methods.base import ContrastiveMethod, NonFiniteLossError
from contrastive.methods.simclr import SimCLR

__all__ = ["ContrastiveMethod", "NonFiniteLossError", "SimCLR"]
