"""Zero-padding to a square, as the official MedGemma container does to every image.

The container (``python/serving/``) pads each image of every task, centred, with zeros
before encoding it, and calls this "the method performed in training":
``dh = width - height``, ``dh // 2`` rows on top and the rest below (the same for
columns when the image is taller than wide). The processor then resizes the square to
896×896, so a padded image keeps its aspect ratio instead of being stretched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Padding", "pad_to_square", "padding_for"]


@dataclass(frozen=True)
class Padding:
    """Rows and columns of zeros added on each side; the source sits at (top, left)."""

    top: int = 0
    bottom: int = 0
    left: int = 0
    right: int = 0

    @property
    def is_none(self) -> bool:
        return not (self.top or self.bottom or self.left or self.right)

    def as_dict(self) -> dict[str, int]:
        return {"top": self.top, "bottom": self.bottom, "left": self.left, "right": self.right}


def padding_for(rows: int, columns: int) -> Padding:
    """The container's padding of a ``rows × columns`` image."""
    if rows < columns:
        dh = columns - rows
        return Padding(top=dh // 2, bottom=dh - dh // 2)
    dw = rows - columns
    return Padding(left=dw // 2, right=dw - dw // 2)


def pad_to_square(pixels: np.ndarray) -> tuple[np.ndarray, Padding]:
    """``pixels`` (rows, columns[, channels]) centred on a zero square; a square as it is."""
    padding = padding_for(int(pixels.shape[0]), int(pixels.shape[1]))
    if padding.is_none:
        return pixels, padding
    widths = [(padding.top, padding.bottom), (padding.left, padding.right)]
    widths += [(0, 0)] * (pixels.ndim - 2)
    return np.pad(pixels, widths), padding
