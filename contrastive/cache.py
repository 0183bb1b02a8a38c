"""What a frozen tower gave before: its outputs remembered per input, texts or images."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Sequence

import torch
from torch import Tensor


class FrozenCache:
    """A frozen tower's outputs, remembered per key (a frozen tower always gives the same), up
    to ``size`` keys; ``size`` 0 remembers nothing.

    Args:
        size: how many keys to remember.
    """

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"a cache size must be >= 0, got {size}")
        self.size = size
        self.rows: dict[Hashable, Tensor] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def clear(self) -> None:
        """Forget every row (the tower changed, or moved to another device or dtype)."""
        self.rows.clear()

    def __call__(self, keys: Sequence[Hashable], compute: Callable[[list[int]], Tensor]) -> Tensor:
        """``(len(keys), D)``: the remembered rows, and ``compute(indices)`` (``(k, D)``, the
        tower's output for the input of each index) for the first occurrence of the others."""
        first = {k: i for i, k in reversed(list(enumerate(keys))) if k not in self.rows}
        missing = sorted(first.values())
        computed = {}
        if missing:
            computed = dict(zip((keys[i] for i in missing), compute(missing), strict=True))
            room = self.size - len(self.rows)
            self.rows.update(list(computed.items())[: max(0, room)])
        return torch.stack([computed.get(k, self.rows.get(k)) for k in keys])


def image_keys(images: Tensor) -> list[bytes]:
    """One key per image of ``(B, ...)``: a digest of its values (and shape and dtype), equal
    exactly when the images are; in any memory format, on any device (read on the CPU)."""
    rows = images.detach().contiguous().cpu()
    head = f"{rows.dtype}{tuple(rows.shape[1:])}".encode()
    flat = rows.reshape(len(rows), -1).view(torch.uint8).numpy()
    return [hashlib.blake2b(head + row.tobytes(), digest_size=16).digest() for row in flat]


__all__ = ["FrozenCache", "image_keys"]
