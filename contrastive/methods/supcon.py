"""SupCon: Supervised Contrastive Learning."""

from __future__ import annotations

from torch import Tensor

from contrastive.methods.simclr import SimCLR


class SupCon(SimCLR):
    """SupCon (Khosla et al. 2020, arXiv:2004.11362), the L_out form the paper recommends.

    SimCLR's architecture with labels: every view of every image with the same label is a
    positive (the mean over positives is taken outside the log), gathered with the labels from
    every rank. Anchors without a positive in the global batch are left out of the mean, so a
    rare class never produces NaN.

    Args:
        label: the label field of the batch (``batch["labels"][label]``), e.g. ``shape``.
        **kwargs: :class:`SimCLR` arguments (temperature, projector sizes) and
            :class:`ContrastiveMethod` arguments (``chunk_size``, ...). Not ``queue_size``:
            queued rows are never positives, so a queue would push every image away from its
            own class.
    """

    def __init__(self, label: str = "shape", **kwargs) -> None:
        if kwargs.get("queue_size", 0):
            raise ValueError(
                "SupCon takes no queue_size: queued rows are negatives, even of their own class"
            )
        super().__init__(**kwargs)
        self.label = label

    def positive_labels(self, batch: dict) -> Tensor:
        """``(B,)`` the batch's ``label`` field: views of one class are positives."""
        labels = batch.get("labels", {})
        if self.label not in labels:
            raise KeyError(
                f"SupCon label '{self.label}' is not in the batch; the data gives: "
                f"{', '.join(labels) or 'no labels'}"
            )
        return labels[self.label]
