"""One whole-slide series → :class:`WsiInput`: the steps of :mod:`node.imaging.wsi`, in order."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from pydicom.dataset import Dataset

from node.imaging.errors import ImagingError
from node.imaging.wsi.patches import MAX_PATCHES, PATCH_SIZE, grid, sample, series_seed
from node.imaging.wsi.pyramid import (
    build_levels,
    nearest_10x,
    read_sources,
    series_uid_of,
    slide_images,
)
from node.imaging.wsi.regions import read_regions
from node.imaging.wsi.tissue import MIN_TISSUE_FRACTION, patches_on_tissue

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WsiInput:
    """The model input for one whole-slide series, plus how it was derived."""

    patches: list[Image.Image]  # RGB 896×896, in the sampled order: the order sent
    positions: list[tuple[int, int]]  # (row, col) pixel offset of each patch, same order
    level_index: int  # 0 = the finest level of the pyramid
    level_pixel_spacing_mm: float
    magnification: float  # 10 × 0.001 mm / level_pixel_spacing_mm
    series_uid: str
    seed: int  # of the random.Random that sampled (and ordered) the patches
    notes: list[str]  # what was dropped, sampled or irregular, and why
    # The headers of the instances the patches were cut from (a concatenated level has
    # several), in the order they were given: the evidence a result cites.
    level_instances: list[Dataset]


def wsi_to_patches(
    datasets_or_paths: Sequence[Dataset | Path],
    *,
    max_patches: int = MAX_PATCHES,
    seed: int | None = None,
) -> WsiInput:
    """Cut MedGemma's tissue patches from one VL Whole Slide Microscopy series.

    Parameters
    ----------
    datasets_or_paths
        The series' instances (all pyramid levels, any order), as datasets or
        file paths. Paths are preferred: headers are read up front and only the
        tiles under chosen patches (and one low-resolution level) are decoded.
    max_patches
        The patch budget (125 for MedGemma 1.5).
    seed
        Seed of the ``random.Random`` that samples the tissue patches and so
        decides the order they are sent in; ``None`` (the default) derives it
        from the SeriesInstanceUID (:func:`series_seed`). The same seed gives the
        same patches in the same order.

    Raises
    ------
    ImagingError
        No WSI instance, instances of several series, a level without pixel
        spacing or tile positions, undecodable tiles, a chosen level smaller than
        one patch, or no full patch on tissue. The message names the
        SeriesInstanceUID.
    """
    if max_patches < 1:
        raise ValueError(f"max_patches must be ≥ 1, got {max_patches}")
    if not datasets_or_paths:
        raise ImagingError("WSI: no instances given")
    notes: list[str] = []
    sources = read_sources(datasets_or_paths)
    series_uid = series_uid_of(sources)
    slides = slide_images(sources, series_uid, notes)
    levels = build_levels(slides, series_uid, notes)
    chosen_index = nearest_10x(levels, notes)
    level = levels[chosen_index]
    level_name = f"level {chosen_index} ({level.columns}×{level.rows} px)"
    candidates = grid(level.rows, level.columns)
    if not candidates:
        raise ImagingError(
            f"series {series_uid}: {level_name} is smaller than one {PATCH_SIZE}×{PATCH_SIZE} "
            f"patch (0 candidates); patches are never padded"
        )
    on_tissue = patches_on_tissue(levels, level, candidates, series_uid, notes)
    if not on_tissue:
        raise ImagingError(
            f"series {series_uid}: none of the {len(candidates)} full {PATCH_SIZE}×{PATCH_SIZE} "
            f"patch candidates at {level_name} has ≥ {MIN_TISSUE_FRACTION:.0%} tissue"
        )

    if seed is None:
        seed = series_seed(series_uid)
    sent = sample(on_tissue, max_patches, seed)
    if len(sent) < len(on_tissue):
        notes.append(
            f"{len(on_tissue)} tissue patches, random sample of {len(sent)} sent in sampled "
            f"order (seed {seed})"
        )
    try:
        arrays = read_regions(level, [(r, c, PATCH_SIZE, PATCH_SIZE) for r, c in sent])
    except ImagingError as error:
        raise ImagingError(f"series {series_uid}: {error}") from error
    logger.info(
        "WSI series %s: level %d (%.2fX), %d/%d full patches on tissue, %d sent (seed %d)",
        series_uid,
        chosen_index,
        level.magnification,
        len(on_tissue),
        len(candidates),
        len(sent),
        seed,
    )
    cut_from = {id(source) for source in level.sources}
    return WsiInput(
        patches=[Image.fromarray(a, "RGB") for a in arrays],
        positions=sent,
        level_index=chosen_index,
        level_pixel_spacing_mm=level.spacing_mm,
        magnification=level.magnification,
        series_uid=series_uid,
        seed=seed,
        notes=notes,
        level_instances=[s.header for s in slides if id(s) in cut_from],
    )
