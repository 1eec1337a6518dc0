"""Trilinear sampling of sparse voxel fields at arbitrary world points, without densifying.

Voxel values sit at voxel centres (see :mod:`oddsparse.geometry.conventions`); a point mixes the
8 voxels around it, and absent voxels contribute 0. This is exactly
``torch.nn.functional.grid_sample(dense, grid_sample_coords(...), align_corners=False,
padding_mode="zeros")`` on ``voxels.dense()``, computed from the packed rows through a hash table
(sorted linear keys + ``torch.searchsorted``), so memory and time scale with the number of points
and voxels, never with the grid volume.
"""
from __future__ import annotations

import torch
from torch import Tensor

from oddsparse.geometry.grid import VoxelGrid
from oddsparse.structures.sparse import SparseVoxels

__all__ = ["VoxelHash", "trilinear_corners", "sample_sparse_trilinear"]

# (8, 3) offsets of the trilinear corners, x-major (corner k has bits (k>>2, k>>1, k) & 1).
_CORNER_OFFSETS = torch.tensor([[(k >> 2) & 1, (k >> 1) & 1, k & 1] for k in range(8)], dtype=torch.long)


class VoxelHash:
    """Lookup table from (batch, ix, iy, iz) to the row of a :class:`SparseVoxels`.

    Built once per sparse tensor (a sort of its N linear keys); each query is a binary search.
    Reuse one table across ray chunks to avoid re-sorting.

    Example:
        >>> dense = torch.zeros(1, 1, 4, 4, 2); dense[0, 0, 1, 2, 0] = 5.0
        >>> table = VoxelHash(SparseVoxels.from_dense(dense))
        >>> table.lookup(torch.tensor([0, 0]), torch.tensor([[1, 2, 0], [3, 3, 1]]))
        (tensor([0, 1]), tensor([ True, False]))
    """

    def __init__(self, voxels: SparseVoxels):
        self.grid = voxels.grid
        self.num_rows = voxels.num_voxels
        keys = voxels.linear_keys()
        self.sorted_keys, self.order = torch.sort(keys)

    def lookup(self, batch_index: Tensor, index_xyz: Tensor) -> tuple[Tensor, Tensor]:
        """Rows of the voxels at integer ``index_xyz`` (..., 3) of scenes ``batch_index`` (...).

        Returns:
            ``(rows, found)``: (...) int64 rows (``num_rows`` where absent, a valid index into
            feats padded with one zero row) and (...) bool.
        """
        index_xyz = index_xyz.long()
        inside = self.grid.contains_index(index_xyz)
        keys = batch_index.long() * self.grid.num_voxels + self.grid.linear_index(index_xyz.clamp(min=0))
        if self.num_rows == 0:
            return torch.full_like(keys, self.num_rows), torch.zeros_like(inside)
        position = torch.searchsorted(self.sorted_keys, keys).clamp(max=self.num_rows - 1)
        found = inside & (self.sorted_keys[position] == keys)
        rows = torch.where(found, self.order[position], torch.full_like(position, self.num_rows))
        return rows, found


def trilinear_corners(grid: VoxelGrid, points_world: Tensor) -> tuple[Tensor, Tensor]:
    """The 8 voxels whose centres surround each point, and their trilinear weights.

    Args:
        grid: the :class:`~oddsparse.geometry.grid.VoxelGrid`.
        points_world: (P, 3).
    Returns:
        ``(corner_index, weights)``: (P, 8, 3) int64 voxel indices (may lie outside the grid) and
        (P, 8) weights summing to 1.
    """
    # Continuous coordinates in which voxel centres are integers.
    centred = grid.world_to_continuous(points_world) - 0.5  # (P, 3)
    base = torch.floor(centred)
    frac = centred - base  # (P, 3) in [0, 1)
    offsets = _CORNER_OFFSETS.to(points_world.device)  # (8, 3)
    corner_index = base.long()[:, None, :] + offsets  # (P, 8, 3)
    per_axis = torch.where(offsets.bool(), frac[:, None, :], 1.0 - frac[:, None, :])  # (P, 8, 3)
    return corner_index, per_axis.prod(dim=-1)


def sample_sparse_trilinear(voxels: SparseVoxels, points_world: Tensor, batch_index: Tensor | None = None, *,
                            table: VoxelHash | None = None, return_weight_sum: bool = False):
    """Trilinear interpolation of ``voxels.feats`` at world points.

    Equals ``grid_sample`` with ``align_corners=False`` and ``padding_mode="zeros"`` on
    ``voxels.dense()``: absent voxels and voxels outside the grid count as 0, so a point gets 0
    once it is more than half a voxel outside the grid or away from every present voxel.
    Differentiable w.r.t. ``voxels.feats`` and ``points_world``.

    Args:
        voxels: SparseVoxels with feats (N, C).
        points_world: (P, 3) world points.
        batch_index: (P,) scene of each point (default: all 0).
        table: a prebuilt :class:`VoxelHash` of ``voxels`` (built here when omitted).
        return_weight_sum: also return the (P,) sum of the weights of the present corners
            (divide by it for an interpolation that ignores absent voxels).
    Returns:
        (P, C) interpolated features (and the (P,) weight sum when asked).

    Example:
        >>> dense = torch.zeros(1, 1, 2, 1, 1); dense[0, 0, 1] = 4.0
        >>> sv = SparseVoxels.from_dense(dense, VoxelGrid(shape=(2, 1, 1), voxel_size=1.0, origin=(0, 0, 0)))
        >>> sample_sparse_trilinear(sv, torch.tensor([[1.0, 0.5, 0.5]]))  # halfway between centres
        tensor([[2.]])
    """
    if points_world.dim() != 2 or points_world.shape[1] != 3:
        raise ValueError(f"sample_sparse_trilinear: points_world must be (P, 3), got {tuple(points_world.shape)}")
    num_points = points_world.shape[0]
    if batch_index is None:
        batch_index = torch.zeros(num_points, dtype=torch.long, device=points_world.device)
    if batch_index.shape != (num_points,):
        raise ValueError(f"sample_sparse_trilinear: batch_index must be ({num_points},), got {tuple(batch_index.shape)}")
    table = table or VoxelHash(voxels)
    corner_index, weights = trilinear_corners(voxels.grid, points_world.to(voxels.feats.dtype))
    rows, found = table.lookup(batch_index[:, None].expand(-1, 8), corner_index)  # (P, 8)
    weights = weights * found
    padded = torch.cat([voxels.feats, voxels.feats.new_zeros(1, voxels.num_channels)])  # (N + 1, C)
    out = voxels.feats.new_zeros(num_points, voxels.num_channels)
    for corner in range(8):  # accumulate one corner at a time: (P, C) intermediates, not (P, 8, C)
        out = out + weights[:, corner, None] * padded[rows[:, corner]]
    if return_weight_sum:
        return out, weights.sum(dim=1)
    return out
