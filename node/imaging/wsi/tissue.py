"""Where the tissue is: an Otsu threshold on saturation, read on a low-resolution level.

Stained tissue is coloured and glass is grey-white, so saturation (max − min of R, G,
B) separates them. This is the one deliberate difference from the notebook, whose
ez-wsi mask (mean grey level at 1.25X) is not available here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from node.imaging.errors import ImagingError
from node.imaging.wsi.patches import PATCH_SIZE, Corner
from node.imaging.wsi.pyramid import Level
from node.imaging.wsi.regions import read_regions

MIN_TISSUE_FRACTION = 0.25
"""A patch is kept when at least this fraction of its area is tissue."""
# The tissue mask is read from the smallest level on which one patch still spans
# this many pixels: fine enough for a 25 % area estimate, small enough to read whole.
MASK_PIXELS_PER_PATCH = 32
# Saturation (max − min of R, G, B) thresholds. Otsu picks the split between
# glass and stain; the floor keeps an almost empty slide's noise (glass is a
# few levels off grey) from becoming "tissue", the ceiling keeps a slide that is
# nearly all tissue from being split between pale and dark stain instead.
SATURATION_FLOOR = 15
SATURATION_CEILING = 60
# Near-black pixels are slide edges, pen marks or scanner borders, not tissue.
DARK_LIMIT = 30


def patches_on_tissue(
    levels: Sequence[Level],
    level: Level,
    candidates: Sequence[Corner],
    series_uid: str,
    notes: list[str],
) -> list[Corner]:
    """The ``candidates`` (patches of ``level``) with ≥ ``MIN_TISSUE_FRACTION`` tissue."""
    mask_level = _mask_level(levels, level)
    # Without a low-resolution level the mask level is big (the chosen level
    # itself at worst): keep every step-th pixel so the mask stays thumbnail-sized,
    # with a patch still spanning ≥ 2 × MASK_PIXELS_PER_PATCH samples.
    patch_on_mask = PATCH_SIZE * mask_level.columns / level.columns
    step = max(1, int(patch_on_mask // MASK_PIXELS_PER_PATCH // 2))
    if step > 1:
        notes.append(
            f"no low-resolution level: tissue found on level {levels.index(mask_level)}, "
            f"every {step}th pixel"
        )
    try:
        region = (0, 0, mask_level.rows, mask_level.columns)
        thumbnail = read_regions(mask_level, [region], step=step)[0]
    except ImagingError as error:
        raise ImagingError(f"series {series_uid}: {error}") from error
    fractions = _tissue_fractions(tissue_mask(thumbnail), candidates, level)
    return [
        pos for pos, frac in zip(candidates, fractions, strict=True) if frac >= MIN_TISSUE_FRACTION
    ]


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Boolean tissue mask of an RGB uint8 image (stained = saturated, glass = grey).

    Otsu's threshold on saturation, bounded to
    [``SATURATION_FLOOR``, ``SATURATION_CEILING``]; near-black pixels are not tissue.
    """
    channels = rgb.astype(np.int16)
    saturation = (channels.max(axis=2) - channels.min(axis=2)).astype(np.uint8)
    threshold = min(max(_otsu(saturation), SATURATION_FLOOR), SATURATION_CEILING)
    return np.asarray((saturation >= threshold) & (channels.mean(axis=2) > DARK_LIMIT))


def _otsu(values: np.ndarray) -> int:
    """Otsu's threshold of uint8 ``values``: the first level of the upper class."""
    histogram = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    total = histogram.sum()
    levels = np.arange(256, dtype=np.float64)
    weight_low = np.cumsum(histogram)
    sum_low = np.cumsum(histogram * levels)
    weight_high = total - weight_low
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_low = sum_low / weight_low
        mean_high = (sum_low[-1] - sum_low) / weight_high
        between = weight_low * weight_high * (mean_low - mean_high) ** 2
    between = np.nan_to_num(between)
    return int(np.argmax(between)) + 1


def _mask_level(levels: Sequence[Level], chosen: Level) -> Level:
    """The smallest level on which a patch of ``chosen`` spans ≥ MASK_PIXELS_PER_PATCH px."""
    usable = [
        level
        for level in levels
        if PATCH_SIZE * level.columns / chosen.columns >= MASK_PIXELS_PER_PATCH
        and PATCH_SIZE * level.rows / chosen.rows >= MASK_PIXELS_PER_PATCH
    ]
    return min(usable, key=lambda level: level.rows * level.columns)


def _tissue_fractions(tissue: np.ndarray, corners: Sequence[Corner], level: Level) -> list[float]:
    """Fraction of each patch's area that is tissue (patches lie inside the matrix)."""
    scale_rows = tissue.shape[0] / level.rows
    scale_columns = tissue.shape[1] / level.columns
    area = PATCH_SIZE * scale_rows * PATCH_SIZE * scale_columns
    fractions = []
    for top, left in corners:
        r0, r1 = round(top * scale_rows), round((top + PATCH_SIZE) * scale_rows)
        c0, c1 = round(left * scale_columns), round((left + PATCH_SIZE) * scale_columns)
        fractions.append(float(tissue[r0:r1, c0:c1].sum()) / area)
    return fractions
