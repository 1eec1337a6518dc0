"""RoI sampling: a voxel field resampled on a fixed grid aligned with each yaw box.

Box ``o`` is cut into ``S x S x S`` cells along its own x, y, z axes; output ``[o, :, i, j, k]``
is the field trilinearly interpolated at the centre of cell ``(i, j, k)``, i.e. at box-frame
position ``((i + 0.5) / S - 0.5) * size_x`` (likewise j, k) before rotating by ``yaw`` and
adding ``center``. Voxel values sit at voxel centres (the ``align_corners=False`` convention of
:func:`~oddsparse.geometry.conventions.grid_sample_coords`); absent voxels and the outside of the
grid count as zero.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from oddsparse.geometry.boxes import as_yaw_boxes, yaw_to_rotation
from oddsparse.geometry.conventions import grid_sample_coords
from oddsparse.geometry.grid import VoxelGrid
from oddsparse.geometry.sampling import sample_sparse_trilinear
from oddsparse.structures.sparse import SparseVoxels

__all__ = ["roi_points", "roi_sample"]


def roi_points(center: Tensor, size: Tensor, yaw: Tensor, out_size: int = 8, margin: float = 0.0) -> Tensor:
    """World positions (O, S, S, S, 3) of the RoI cell centres; ``margin`` metres added on every side."""
    steps = (torch.arange(out_size, dtype=center.dtype, device=center.device) + 0.5) / out_size - 0.5
    ii, jj, kk = torch.meshgrid(steps, steps, steps, indexing="ij")
    unit = torch.stack([ii, jj, kk], dim=-1)  # (S, S, S, 3)
    extent = size + 2 * margin  # (O, 3)
    local = unit[None] * extent[:, None, None, None]  # (O, S, S, S, 3)
    rotation = yaw_to_rotation(yaw.to(center.dtype))  # (O, 3, 3)
    return torch.einsum("oij,oabcj->oabci", rotation, local) + center[:, None, None, None]


def _sample_dense(volume: Tensor, grid: VoxelGrid, points: Tensor, batch_index: Tensor) -> Tensor:
    """volume (B, C, X, Y, Z), points (O, S, S, S, 3) -> (O, C, S, S, S)."""
    out = volume.new_zeros(points.shape[0], volume.shape[1], *points.shape[1:4])
    for b in torch.unique(batch_index).tolist():
        rows = torch.nonzero(batch_index == b)[:, 0]
        coords = grid_sample_coords(grid.world_to_continuous(points[rows]), grid.shape)  # (O_b, S, S, S, 3)
        size = coords.shape[1]
        flat = coords.reshape(1, -1, size, size, 3).to(volume.dtype)  # (1, O_b*S, S, S, 3)
        sampled = F.grid_sample(volume[b:b + 1], flat, mode="bilinear", padding_mode="zeros", align_corners=False)
        sampled = sampled.reshape(volume.shape[1], rows.numel(), size, size, size).transpose(0, 1)
        out = out.index_put((rows,), sampled)
    return out


def _sample_sparse(volume: SparseVoxels, points: Tensor, batch_index: Tensor) -> Tensor:
    """Trilinear interpolation by hash lookup of the 8 neighbouring voxels (never densifies)."""
    shape = points.shape[:4]  # (O, S, S, S)
    batch = batch_index.to(volume.device).long().repeat_interleave(shape[1] * shape[2] * shape[3])  # (P,)
    out = sample_sparse_trilinear(volume, points.reshape(-1, 3).to(volume.feats.dtype), batch)  # (P, C)
    return out.reshape(*shape, -1).permute(0, 4, 1, 2, 3)


def roi_sample(volume: SparseVoxels | Tensor, boxes, batch_index: Tensor | None = None, *, out_size: int = 8,
               margin: float = 0.0, grid: VoxelGrid | None = None,
               method: Literal["auto", "dense", "sparse"] = "auto") -> Tensor:
    """Resample a voxel field on an ``out_size**3`` grid aligned with each box.

    Args:
        volume: :class:`SparseVoxels` (absent voxels are zero) or dense (B, C, X, Y, Z) with ``grid``.
        boxes: O yaw boxes: :class:`~oddsparse.geometry.boxes.YawBoxes`, ``(center, size, yaw)``, or an
            object with ``center``/``size``/``rotation``.
        batch_index: (O,) scene of each box; default all 0.
        out_size: S, cells per box axis.
        margin: metres added to every side of each box.
        method: ``"dense"`` (``grid_sample`` on the dense volume; densifies a SparseVoxels),
            ``"sparse"`` (hash lookup of the 8 neighbours; SparseVoxels only, never densifies), or
            ``"auto"`` (sparse for SparseVoxels, dense for a dense tensor). Both give the same values.
    Returns:
        (O, C, S, S, S) samples, axes (i, j, k) along box x, y, z. Differentiable in the features.

    Example:
        >>> grid = VoxelGrid(shape=(8, 8, 4), voxel_size=0.1, origin=(-0.4, -0.4, 0.0))
        >>> volume = torch.rand(1, 3, 8, 8, 4)
        >>> boxes = (torch.tensor([[0.0, 0.0, 0.2]]), torch.tensor([[0.3, 0.2, 0.2]]), torch.tensor([0.4]))
        >>> roi_sample(volume, boxes, grid=grid).shape
        torch.Size([1, 3, 8, 8, 8])
    """
    center, size, yaw = as_yaw_boxes(boxes)
    if center.dim() != 2 or center.shape[1] != 3 or size.shape != center.shape or yaw.shape != center.shape[:1]:
        raise ValueError(f"roi_sample: boxes must be center (O, 3), size (O, 3), yaw (O,), got "
                         f"{tuple(center.shape)}, {tuple(size.shape)}, {tuple(yaw.shape)}")
    is_sparse = isinstance(volume, SparseVoxels)
    if is_sparse:
        grid = volume.grid
        dtype, device, channels = volume.feats.dtype, volume.feats.device, volume.num_channels
    else:
        if grid is None:
            raise ValueError("roi_sample: a dense volume needs grid=VoxelGrid(...)")
        if volume.dim() != 5 or tuple(volume.shape[2:]) != grid.shape:
            raise ValueError(f"roi_sample: dense volume must be (B, C, {', '.join(map(str, grid.shape))}), "
                             f"got {tuple(volume.shape)}")
        dtype, device, channels = volume.dtype, volume.device, volume.shape[1]
    if batch_index is None:
        batch_index = torch.zeros(center.shape[0], dtype=torch.long, device=device)
    batch_index = torch.as_tensor(batch_index, device=device).long()
    if batch_index.shape != center.shape[:1]:
        raise ValueError(f"roi_sample: batch_index must be (O,) = ({center.shape[0]},), got {tuple(batch_index.shape)}")
    if center.shape[0] == 0:
        return torch.zeros(0, channels, out_size, out_size, out_size, dtype=dtype, device=device)
    points = roi_points(center.to(device, dtype), size.to(device, dtype), yaw.to(device, dtype), out_size, margin)

    if method == "auto":
        method = "sparse" if is_sparse else "dense"
    if method == "sparse":
        if not is_sparse:
            raise ValueError("roi_sample: method='sparse' needs a SparseVoxels volume")
        return _sample_sparse(volume, points, batch_index)
    if method != "dense":
        raise ValueError(f"roi_sample: method must be 'auto', 'dense' or 'sparse', got {method!r}")
    dense = volume.dense() if is_sparse else volume
    return _sample_dense(dense, grid, points, batch_index)
