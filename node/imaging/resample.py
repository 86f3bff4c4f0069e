"""SimpleITK images of a stack, and resampling a non-axial stack onto an axial grid.

An ITK image places voxel ``(i, j, k)`` at ``origin + D · diag(spacing) · (i, j, k)``,
where column 0 of the direction matrix ``D`` is the row cosine (the direction
of increasing column index, DICOM IOP[0:3]), column 1 the column cosine
(IOP[3:6]) and column 2 the stacking direction. ITK's spacing is therefore
``(PixelSpacing[1], PixelSpacing[0], slice step)``.

For an ordinary stack the stacking direction is the slice normal and the step
is the median step along it, exactly what ``sitk.ImageSeriesReader`` builds.
For a *sheared* stack (tilted gantry: the table moves along z while the slices
are tilted), column 2 is the direction the slices really advance in, so ``D``
is not orthonormal and every voxel still sits where the scanner put it; ITK's
resampling inverts ``D · diag(spacing)`` in general, so resampling such an
image onto an axial grid removes the shear.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from node.imaging.errors import ImagingError
from node.imaging.stack_types import Stack

# The model was trained on slices of at most 512 × 512.
MAX_AXIAL_MATRIX = 512


@dataclass(frozen=True)
class AxialGrid:
    """An axial (identity direction, LPS) grid covering a volume."""

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    size: tuple[int, int, int]  # (columns, rows, slices)

    def z(self, k: int) -> float:
        return self.origin[2] + k * self.spacing[2]


def stack_to_sitk(stack: Stack, volume: np.ndarray) -> sitk.Image:
    """The stack's values ``(slices, rows, columns)`` as an ITK image in patient space."""
    if stack.pixel_spacing is None:
        raise ImagingError(f"series {stack.series_uid}: no PixelSpacing, voxels can't be placed")
    if volume.shape[0] != len(stack.frames):
        raise ValueError(f"volume has {volume.shape[0]} slices, stack {len(stack.frames)}")
    row_cosine = stack.orientation[:3]
    column_cosine = stack.orientation[3:]
    direction, step = stack.normal, stack.step_mm or 1.0
    if stack.step_vector is not None and stack.shear_deg > 0:
        # Advance along the real stepping direction, keeping the median step
        # along the normal: the normal component of each step stays step_mm.
        length = float(np.linalg.norm(stack.step_vector))
        direction = stack.step_vector / length
        step = step / math.cos(math.radians(stack.shear_deg))
    matrix = np.column_stack([row_cosine, column_cosine, direction])
    image = sitk.GetImageFromArray(volume)
    image.SetOrigin(tuple(float(v) for v in stack.frames[0].ipp))
    image.SetSpacing((float(stack.pixel_spacing[1]), float(stack.pixel_spacing[0]), float(step)))
    image.SetDirection(tuple(float(v) for v in matrix.flatten()))
    return image


def axial_grid(image: sitk.Image, *, max_matrix: int = MAX_AXIAL_MATRIX) -> AxialGrid:
    """The axial grid that covers ``image``'s voxel centres.

    Spacing along each patient axis is the largest extent one source voxel
    projects onto it (a sagittal stack's slice step becomes the x spacing, its
    row spacing the z spacing); rows and columns share the finer of x and y, and
    are coarsened if the matrix would exceed ``max_matrix``.
    """
    size = image.GetSize()
    corners = np.array(
        [
            image.TransformContinuousIndexToPhysicalPoint((float(i), float(j), float(k)))
            for i in (0, size[0] - 1)
            for j in (0, size[1] - 1)
            for k in (0, size[2] - 1)
        ]
    )
    low, high = corners.min(axis=0), corners.max(axis=0)
    extent = high - low
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    projected = np.max(np.abs(direction) * spacing[np.newaxis, :], axis=1)
    in_plane = float(min(projected[0], projected[1]))
    widest = float(max(extent[0], extent[1]))
    if widest / in_plane + 1 > max_matrix:
        in_plane = widest / (max_matrix - 1)
    z_spacing = float(projected[2])
    out_size = (
        int(math.floor(extent[0] / in_plane + 1e-6)) + 1,
        int(math.floor(extent[1] / in_plane + 1e-6)) + 1,
        int(math.floor(extent[2] / z_spacing + 1e-6)) + 1,
    )
    return AxialGrid(
        origin=(float(low[0]), float(low[1]), float(low[2])),
        spacing=(in_plane, in_plane, z_spacing),
        size=out_size,
    )


class AxialResampler:
    """Resamples single axial slices of ``grid`` from ``image`` (linear)."""

    def __init__(self, image: sitk.Image, grid: AxialGrid, *, default_value: float) -> None:
        self._image = image
        self._grid = grid
        self._filter = sitk.ResampleImageFilter()
        self._filter.SetInterpolator(sitk.sitkLinear)
        self._filter.SetOutputDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
        self._filter.SetOutputSpacing(grid.spacing)
        self._filter.SetSize((grid.size[0], grid.size[1], 1))
        self._filter.SetDefaultPixelValue(float(default_value))
        self._filter.SetOutputPixelType(sitk.sitkFloat32)

    def slice(self, k: int) -> np.ndarray:
        """Axial slice ``k`` of the grid as float32 ``(rows, columns)``."""
        origin = self._grid.origin
        self._filter.SetOutputOrigin((origin[0], origin[1], self._grid.z(k)))
        out = self._filter.Execute(self._image)
        return np.asarray(sitk.GetArrayFromImage(out)[0])
