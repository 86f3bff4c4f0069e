"""The patches MedGemma gets: ez-wsi's grid of full 896×896 squares, and the notebook's sample."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from node.inference.budgets import IMAGE_SIZE, MAX_WSI_PATCHES

PATCH_SIZE = IMAGE_SIZE
"""MedGemma's image side: patches are cut at this size and never resized."""
MAX_PATCHES = MAX_WSI_PATCHES
"""MedGemma 1.5's patch budget for one slide."""

Corner = tuple[int, int]  # (top, left) pixel offset of a patch at its level


def grid(rows: int, columns: int) -> list[Corner]:
    """Top-left corners of the non-overlapping *full* patches inside the matrix, row-major.

    ez-wsi's grid (stride = patch size): ``floor(rows / 896) × floor(columns / 896)``
    patches from the top-left corner; none if the matrix is smaller than one patch.
    """
    return [
        (top, left)
        for top in range(0, rows - PATCH_SIZE + 1, PATCH_SIZE)
        for left in range(0, columns - PATCH_SIZE + 1, PATCH_SIZE)
    ]


def sample(on_tissue: Sequence[Corner], max_patches: int, seed: int) -> list[Corner]:
    """The notebook's ``random.sample(patches, k=min(125, n))``, in its (sampled) order."""
    return random.Random(seed).sample(list(on_tissue), k=min(max_patches, len(on_tissue)))


def series_seed(series_uid: str) -> int:
    """The default sampling seed of a series: the first 8 bytes of SHA-256 of its UID.

    ``int.from_bytes(sha256(series_uid as UTF-8).digest()[:8], "big")``: stable
    across processes and Python versions (unlike ``hash``), so a rerun on the same
    series sends the same patches in the same order.
    """
    return int.from_bytes(hashlib.sha256(series_uid.encode()).digest()[:8], "big")
