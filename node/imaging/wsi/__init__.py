"""VL Whole Slide Microscopy series → the ≤ 125 tissue patches MedGemma 1.5 was trained on.

MedGemma's pathology input is a *set* of non-overlapping 896×896 RGB patches cut
at the pyramid level nearest 10X, from tissue only, at most 125 of them. This
package cuts them as the official MedGemma 1.5 pathology notebook does with ez-wsi
(``DicomPatchGenerator(patch_size=896, stride_size=896)``, then
``random.sample(patches, k=min(125, n))``, sent in the sampled order). The path
(:func:`wsi_to_patches`, in :mod:`.slide`):

1. Read headers only (paths): a 40X level is gigabytes of pixels.
2. Group instances into pyramid levels by total pixel matrix size; the parts of
   a concatenation (Orthanc splits levels over several instances) join one
   level. LABEL and OVERVIEW images are not part of the pyramid and are dropped.
3. Map every tile to (instance, frame): from the per-frame Plane Position (Slide)
   when present (Orthanc's output, TILED_SPARSE), else by the TILED_FULL order
   (row-major tiles, frame offsets continuing across a concatenation).
4. Choose the level nearest 10X. Magnification convention: 10X ≈ 1.0 µm/px,
   i.e. ``magnification = 10 × 0.001 mm / pixel spacing (mm)`` (0.25 µm/px is
   40X, 0.5 µm/px 20X). "Nearest" is on a log scale, because pyramid levels
   are powers of two apart; a tie goes to the finer level.
5. Find tissue on a low-resolution level (the smallest one on which a patch
   still spans ``MASK_PIXELS_PER_PATCH`` pixels): stained tissue is coloured,
   glass is grey-white, so an Otsu threshold on saturation (max − min of RGB),
   bounded below and above, separates them.
6. Lay a grid of full 896×896 patches over the chosen level from its top-left
   corner, as ez-wsi does: ``floor(columns / 896) × floor(rows / 896)`` candidates,
   row-major; the strip past the last full patch on the right and bottom is never
   sent (nothing is padded). Keep the candidates with ≥ ``MIN_TISSUE_FRACTION``
   tissue. A level smaller than 896 px in either dimension, or one where no
   full patch is on tissue, is an error.
7. ``random.Random(seed).sample(on_tissue, k=min(max_patches, n))`` over the n
   kept candidates in row-major order, always (for n ≤ 125 that is a
   permutation), and send the patches in that sampled order, as the notebook
   does. The seed defaults to one derived from the SeriesInstanceUID
   (:func:`series_seed`), so a rerun sends the same patches in the same order.
   Only the tiles those patches touch are decoded, each once.

The one deliberate difference from the notebook is step 5: ez-wsi's tissue mask
(mean grey level at 1.25X between 1/255 and 0.8 of white, per stride) is not
available here, so tissue is the Otsu-on-saturation mask above. Everything else
(grid, full patches only, sample size, sampled order) is the notebook's.

The patches are not resampled to exactly 10X: MedGemma's pipeline takes the
nearest level as it is, and resampling would change texture scale.

Modules, one concern each: :mod:`.pyramid` (steps 1–4: levels, their tiles, which
level), :mod:`.tissue` (step 5 and the fraction of each patch on tissue),
:mod:`.patches` (steps 6–7: the grid and the sample), :mod:`.regions` (decoding the
pixels under some regions of a level, each tile once) and :mod:`.slide`, which runs them.
"""

from __future__ import annotations

from node.imaging.wsi.patches import MAX_PATCHES, PATCH_SIZE, series_seed
from node.imaging.wsi.slide import WsiInput, wsi_to_patches
from node.imaging.wsi.tissue import MIN_TISSUE_FRACTION, tissue_mask

__all__ = [
    "MAX_PATCHES",
    "MIN_TISSUE_FRACTION",
    "PATCH_SIZE",
    "WsiInput",
    "series_seed",
    "tissue_mask",
    "wsi_to_patches",
]
