"""Voxel grid specification and world <-> voxel index maps.

See :mod:`oddsparse.geometry.conventions` for the index order ``(ix, iy, iz)`` and the dense
layout ``(B, C, X, Y, Z)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["VoxelGrid"]


@dataclass(frozen=True)
class VoxelGrid:
    """An axis-aligned voxel grid in world coordinates.

    Args:
        shape: (X, Y, Z) number of voxels per world axis.
        voxel_size: voxel edge length in metres.
        origin: world position of the min corner of voxel (0, 0, 0).

    The default, 96 x 96 x 16 voxels of 4 cm centred on the world origin with the floor at the
    bottom face, covers 3.84 m x 3.84 m x 0.64 m: the floor area of the published scenes with
    objects at ``z >= 0``.

    Example:
        >>> grid = VoxelGrid()
        >>> grid.voxel_centers(torch.tensor([[0, 0, 0]]))
        tensor([[-1.9000, -1.9000,  0.0200]])
    """

    shape: tuple[int, int, int] = (96, 96, 16)
    voxel_size: float = 0.04
    origin: tuple[float, float, float] = (-1.92, -1.92, 0.0)

    def __post_init__(self):
        shape = tuple(int(s) for s in self.shape)
        origin = tuple(float(o) for o in self.origin)
        if len(shape) != 3 or min(shape) <= 0:
            raise ValueError(f"VoxelGrid.shape must be 3 positive ints (X, Y, Z), got {self.shape}")
        if len(origin) != 3:
            raise ValueError(f"VoxelGrid.origin must be 3 floats, got {self.origin}")
        if not self.voxel_size > 0:
            raise ValueError(f"VoxelGrid.voxel_size must be > 0, got {self.voxel_size}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "voxel_size", float(self.voxel_size))

    @classmethod
    def centered(cls, shape=(96, 96, 16), voxel_size=0.04, center_xy=(0.0, 0.0), floor_z=0.0) -> "VoxelGrid":
        """Grid centred on ``center_xy`` with its bottom face on the floor."""
        origin = (center_xy[0] - shape[0] * voxel_size / 2, center_xy[1] - shape[1] * voxel_size / 2, floor_z)
        return cls(shape=tuple(shape), voxel_size=voxel_size, origin=origin)

    @property
    def num_voxels(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    @property
    def extent(self) -> tuple[float, float, float]:
        """Size of the grid in metres along (x, y, z)."""
        return tuple(s * self.voxel_size for s in self.shape)

    def bounds(self, device=None, dtype=torch.float32) -> Tensor:
        """(2, 3) world min and max corners."""
        lo = torch.tensor(self.origin, device=device, dtype=dtype)
        return torch.stack([lo, lo + torch.tensor(self.extent, device=device, dtype=dtype)])

    def world_to_continuous(self, points_world: Tensor) -> Tensor:
        """World points (..., 3) -> continuous voxel coordinates (..., 3); voxel i spans [i, i + 1)."""
        origin = points_world.new_tensor(self.origin)
        return (points_world - origin) / self.voxel_size

    def world_to_index(self, points_world: Tensor) -> Tensor:
        """World points (..., 3) -> int64 voxel indices (..., 3) of the voxels containing them (may be outside)."""
        return torch.floor(self.world_to_continuous(points_world)).long()

    def voxel_centers(self, index: Tensor, dtype=torch.float32) -> Tensor:
        """Integer voxel indices (..., 3) -> world positions (..., 3) of the voxel centres."""
        origin = torch.tensor(self.origin, device=index.device, dtype=dtype)
        return origin + (index.to(dtype) + 0.5) * self.voxel_size

    def contains_index(self, index: Tensor) -> Tensor:
        """(..., 3) integer indices -> (...) bool, True inside the grid."""
        upper = torch.tensor(self.shape, device=index.device)
        return ((index >= 0) & (index < upper)).all(dim=-1)

    def all_indices(self, device=None) -> Tensor:
        """(X*Y*Z, 3) int64 indices of every voxel in dense (x-major, then y, then z) order."""
        axes = [torch.arange(s, device=device) for s in self.shape]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)

    def linear_index(self, index: Tensor) -> Tensor:
        """(..., 3) indices -> (...) int64 positions in the dense (X, Y, Z) flattening."""
        _, ny, nz = self.shape
        index = index.long()
        return (index[..., 0] * ny + index[..., 1]) * nz + index[..., 2]
