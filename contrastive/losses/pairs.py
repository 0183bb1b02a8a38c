"""Which views a multi-view loss compares."""

from __future__ import annotations


def cross_view_pairs(
    num_views: int, num_global: int = 2, symmetric: bool = False
) -> list[tuple[int, int]]:
    """The ``(view, global view)`` pairs a loss compares; the global views come first.

    Every view is compared with each global view but itself, as in multi-crop (SwAV, DINO):
    ``[(1, 0), (2, 0), ..., (0, 1), (2, 1), ...]``; two views give ``[(1, 0), (0, 1)]``, the
    symmetrised loss. ``symmetric``: for losses symmetric in their two arguments (VICReg,
    Barlow Twins), each unordered pair once: two views give ``[(1, 0)]``.

    Args:
        num_views: ``V``, all views of an image.
        num_global: ``G``, the global views among them (a teacher's views), views ``0..G-1``.
        symmetric: one pair per unordered pair of views.
    """
    if not 1 <= num_global <= num_views or num_views < 2:
        raise ValueError(
            f"expected 2 or more views, 1 to all of them global, got {num_views} views and "
            f"{num_global} global"
        )
    return [
        (v, g)
        for g in range(num_global)
        for v in range(num_views)
        if v != g and not (symmetric and v < g)  # (g, v) is in the list already
    ]
