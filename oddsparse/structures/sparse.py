"""SparseVoxels: the library's packed sparse voxel tensor."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from oddsparse.geometry.grid import VoxelGrid

__all__ = ["SparseVoxels"]


@dataclass(frozen=True)
class SparseVoxels:
    """Sparse voxel grids of a batch, packed (COO).

    ``coords[:, 0]`` is the batch index, ``coords[:, 1:]`` the voxel index ``(ix, iy, iz)``
    (order stated in :mod:`oddsparse.geometry.conventions`). Rows are unique; their order is
    free but preserved by every operation that keeps the same sites.

    Attributes:
        coords: (N, 4) int32.
        feats: (N, C) floating point.
        batch_size: B.
        grid: the :class:`VoxelGrid` shared by the batch.

    Example:
        >>> dense = torch.zeros(1, 2, 4, 4, 2); dense[0, :, 1, 2, 0] = 1.0
        >>> sv = SparseVoxels.from_dense(dense, VoxelGrid(shape=(4, 4, 2)))
        >>> sv.coords, sv.feats.shape
        (tensor([[0, 1, 2, 0]], dtype=torch.int32), torch.Size([1, 2]))
        >>> torch.equal(sv.dense(), dense)
        True
    """

    coords: Tensor
    feats: Tensor
    batch_size: int
    grid: VoxelGrid

    def __post_init__(self):
        if not isinstance(self.coords, Tensor) or self.coords.dim() != 2 or self.coords.shape[1] != 4:
            raise ValueError(f"SparseVoxels.coords must be an (N, 4) int32 tensor, got "
                             f"{getattr(self.coords, 'shape', type(self.coords))}")
        if self.coords.dtype != torch.int32:
            raise ValueError(f"SparseVoxels.coords must be int32, got {self.coords.dtype}")
        if not isinstance(self.feats, Tensor) or self.feats.dim() != 2 or self.feats.shape[0] != self.coords.shape[0]:
            raise ValueError(f"SparseVoxels.feats must be (N, C) with N = {self.coords.shape[0]}, got "
                             f"{getattr(self.feats, 'shape', type(self.feats))}")
        if self.batch_size < 0:
            raise ValueError(f"SparseVoxels.batch_size must be >= 0, got {self.batch_size}")
        if not isinstance(self.grid, VoxelGrid):
            raise ValueError(f"SparseVoxels.grid must be a VoxelGrid, got {type(self.grid)}")

    # ------------------------------------------------------------------ basics
    @property
    def num_voxels(self) -> int:
        return self.coords.shape[0]

    @property
    def num_channels(self) -> int:
        return self.feats.shape[1]

    @property
    def batch_index(self) -> Tensor:
        """(N,) int64 scene index of each voxel."""
        return self.coords[:, 0].long()

    @property
    def device(self):
        return self.feats.device

    def replace(self, **changes) -> "SparseVoxels":
        """A new SparseVoxels with some fields replaced (``sv.replace(feats=new_feats)``)."""
        return replace(self, **changes)

    def to(self, *args, **kwargs) -> "SparseVoxels":
        feats = self.feats.to(*args, **kwargs)
        return self.replace(coords=self.coords.to(feats.device), feats=feats)

    def voxel_centers(self) -> Tensor:
        """(N, 3) world positions of the voxel centres."""
        return self.grid.voxel_centers(self.coords[:, 1:], dtype=self.feats.dtype if self.feats.is_floating_point() else torch.float32)

    def occupancy(self) -> float:
        """Fraction of the batch's voxels that are present."""
        return self.num_voxels / max(1, self.batch_size * self.grid.num_voxels)

    def check_bounds(self) -> "SparseVoxels":
        """This tensor, after a ValueError where a row's batch index is outside ``[0, batch_size)`` or its voxel
        index outside the grid (such a row would wrap onto another voxel in :meth:`dense` and
        :meth:`linear_keys`). Construction does not check it (that would read the coordinates on every
        ``replace``); the two methods that would wrap do."""
        if self.num_voxels:
            low = self.coords.amin(dim=0).tolist()
            high = self.coords.amax(dim=0).tolist()
            upper = [self.batch_size, *self.grid.shape]
            for axis, name in enumerate(("batch", "ix", "iy", "iz")):
                if low[axis] < 0 or high[axis] >= upper[axis]:
                    raise ValueError(f"SparseVoxels.coords: {name} must be in [0, {upper[axis]}), got "
                                     f"{low[axis]}..{high[axis]}")
        return self

    def linear_keys(self) -> Tensor:
        """(N,) int64 unique key per row (batch, voxel) for hashing/joins (:meth:`check_bounds` first)."""
        self.check_bounds()
        return self.coords[:, 0].long() * self.grid.num_voxels + self.grid.linear_index(self.coords[:, 1:])

    def sorted(self) -> "SparseVoxels":
        """Rows sorted by (batch, ix, iy, iz)."""
        order = torch.argsort(self.linear_keys())
        return self.replace(coords=self.coords[order], feats=self.feats[order])

    def select(self, mask: Tensor) -> "SparseVoxels":
        """Keep the rows where ``mask`` (N,) is True."""
        return self.replace(coords=self.coords[mask], feats=self.feats[mask])

    # ------------------------------------------------------------------ dense round trip
    def dense(self, fill: float = 0.0) -> Tensor:
        """(B, C, X, Y, Z) dense tensor; absent voxels hold ``fill``. Differentiable in ``feats``."""
        batch, channels = self.batch_size, self.num_channels
        flat = self.feats.new_full((batch * self.grid.num_voxels, channels), fill)
        flat = flat.index_put((self.linear_keys(),), self.feats)
        return flat.reshape(batch, *self.grid.shape, channels).permute(0, 4, 1, 2, 3).contiguous()

    @classmethod
    def from_dense(cls, dense: Tensor, grid: VoxelGrid | None = None, mask: Tensor | None = None) -> "SparseVoxels":
        """Sparse tensor of the sites of ``dense`` (B, C, X, Y, Z) where ``mask`` (B, X, Y, Z) is True.

        Without ``mask`` the sites are those where any channel is non-zero. Rows come out in
        (batch, ix, iy, iz) order. Differentiable in ``dense``.
        """
        if dense.dim() != 5:
            raise ValueError(f"from_dense expects (B, C, X, Y, Z), got shape {tuple(dense.shape)}")
        grid = grid or VoxelGrid(shape=tuple(dense.shape[2:]))
        if tuple(dense.shape[2:]) != grid.shape:
            raise ValueError(f"dense spatial shape {tuple(dense.shape[2:])} does not match grid.shape {grid.shape}")
        if mask is None:
            mask = (dense != 0).any(dim=1)
        # torch.nonzero may return a column-major (N, 4) view; spconv reads raw memory, so make it contiguous
        coords = torch.nonzero(mask).to(torch.int32).contiguous()  # (N, 4) (b, x, y, z), row-major order
        feats = dense.permute(0, 2, 3, 4, 1)[mask]
        return cls(coords=coords, feats=feats, batch_size=dense.shape[0], grid=grid)

    # ------------------------------------------------------------------ spconv bridge
    def to_spconv(self):
        """``spconv.pytorch.SparseConvTensor`` with the same sites and features (spatial shape (X, Y, Z))."""
        from oddsparse._backends import require_spconv

        spconv = require_spconv()
        return spconv.SparseConvTensor(self.feats.contiguous(), self.coords.contiguous(), list(self.grid.shape),
                                       self.batch_size)

    @classmethod
    def from_spconv(cls, tensor, grid: VoxelGrid) -> "SparseVoxels":
        """Wrap a ``SparseConvTensor`` whose spatial shape matches ``grid.shape``."""
        if tuple(tensor.spatial_shape) != grid.shape:
            raise ValueError(f"SparseConvTensor.spatial_shape {tuple(tensor.spatial_shape)} != grid.shape {grid.shape}")
        return cls(coords=tensor.indices.to(torch.int32), feats=tensor.features,
                   batch_size=int(tensor.batch_size), grid=grid)

    # ------------------------------------------------------------------ helpers
    @classmethod
    def cat(cls, items: list["SparseVoxels"]) -> "SparseVoxels":
        """Concatenate batches (scene indices are offset)."""
        if not items:
            raise ValueError("SparseVoxels.cat needs at least one item")
        grid = items[0].grid
        coords, feats, offset = [], [], 0
        for item in items:
            if item.grid != grid:
                raise ValueError("SparseVoxels.cat: all items must share the same grid")
            shifted = item.coords.clone()
            shifted[:, 0] += offset
            coords.append(shifted)
            feats.append(item.feats)
            offset += item.batch_size
        return cls(coords=torch.cat(coords), feats=torch.cat(feats), batch_size=offset, grid=grid)
