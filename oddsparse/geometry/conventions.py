"""Coordinate conventions of oddsparse, stated once.

Every other module imports the helpers below instead of re-deriving a convention.
The statements are checked numerically on the real published scene in
``tests/geometry/test_conventions.py``.

World frame
    Right-handed, metres, **z up**; the floor is the plane ``z = 0`` and objects rest on it
    (``z >= 0``). This is the frame of the published ToysAD-8K / PartsAD-15K metadata.

Camera frame (OpenCV)
    ``world_to_cam`` is a 4x4 matrix ``[R | t]`` mapping homogeneous world points to the camera
    frame with **x right, y down, z forward** (the published ``camera.poses[v].rotation``).
    A point is in front of the camera when ``z_cam > 0``; its depth is ``z_cam`` (z-depth, not
    distance along the ray).

Pixels
    ``uv = K @ x_cam / z_cam`` with ``u`` along image columns and ``v`` along rows. Pixel
    centres sit at **index + 0.5**: the pixel at row ``i``, column ``j`` has centre
    ``(u, v) = (j + 0.5, i + 0.5)`` (Blender's convention, used by the published renders).
    An image of width W covers ``0 <= u < W``.

Voxels
    A :class:`~oddsparse.geometry.grid.VoxelGrid` has ``shape = (X, Y, Z)`` voxels of edge
    ``voxel_size`` and ``origin`` = world position of the *min corner* of voxel ``(0, 0, 0)``.
    The voxel index order is ``(ix, iy, iz)``, following world axes ``(x, y, z)``; voxel
    ``(ix, iy, iz)`` has its centre at ``origin + (index + 0.5) * voxel_size``. Dense grids are
    laid out ``(B, C, X, Y, Z)``; sparse coordinates are ``(N, 4)`` int32 rows
    ``(batch, ix, iy, iz)``.

    ``torch.nn.functional.grid_sample`` on a dense ``(B, C, X, Y, Z)`` volume reads its last
    grid dimension as ``(z_norm, y_norm, x_norm)``: use :func:`grid_sample_coords`.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "WORLD_UP",
    "PIXEL_CENTER_OFFSET",
    "VOXEL_AXES",
    "pixel_centers",
    "pixels_to_grid_sample",
    "grid_sample_coords",
]

#: World up axis (z up, floor at z = 0).
WORLD_UP = (0.0, 0.0, 1.0)
#: Offset of a pixel centre from its integer index.
PIXEL_CENTER_OFFSET = 0.5
#: Order of the spatial voxel axes in indices, sparse coordinates and dense layouts.
VOXEL_AXES = ("x", "y", "z")


def pixel_centers(height: int, width: int, *, device=None, dtype=torch.float32) -> Tensor:
    """(u, v) coordinates of all pixel centres, row-major.

    Returns:
        (H, W, 2) tensor, ``out[i, j] = (j + 0.5, i + 0.5)``.

    Example:
        >>> pixel_centers(2, 3)[1, 2]
        tensor([2.5000, 1.5000])
    """
    v = torch.arange(height, device=device, dtype=dtype) + PIXEL_CENTER_OFFSET
    u = torch.arange(width, device=device, dtype=dtype) + PIXEL_CENTER_OFFSET
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu, vv], dim=-1)


def pixels_to_grid_sample(uv: Tensor, height: int, width: int) -> Tensor:
    """Pixel coordinates -> ``grid_sample`` coordinates for ``align_corners=False``.

    With ``align_corners=False``, -1 and +1 are the outer edges of the image, which is
    exactly ``u = 0`` and ``u = W`` under the index + 0.5 centre convention.

    Args:
        uv: (..., 2) pixel coordinates (u along columns, v along rows).
    Returns:
        (..., 2) normalised coordinates (x, y) in [-1, 1] for points inside the image.
    """
    scale = uv.new_tensor([2.0 / width, 2.0 / height])
    return uv * scale - 1.0


def grid_sample_coords(index_xyz: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """Continuous voxel indices -> ``grid_sample`` coordinates for a ``(B, C, X, Y, Z)`` volume.

    ``index_xyz`` are continuous voxel coordinates where voxel ``i`` spans ``[i, i + 1)``
    (so its centre is ``i + 0.5``), as returned by ``VoxelGrid.world_to_continuous``.
    Uses ``align_corners=False`` semantics.

    Args:
        index_xyz: (..., 3) continuous (x, y, z) voxel coordinates.
        shape: (X, Y, Z) grid shape.
    Returns:
        (..., 3) normalised coordinates ordered ``(z, y, x)`` as ``grid_sample`` expects for a
        volume whose spatial dims are ``(X, Y, Z)``.
    """
    sizes = index_xyz.new_tensor(shape)
    normalised = index_xyz * (2.0 / sizes) - 1.0
    return normalised.flip(-1)
