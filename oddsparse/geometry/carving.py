"""Space carving: per-view foreground masks -> sparse voxel occupancy (a visual hull).

Rule (per scene): a view *sees* a voxel when at least one of the voxel's sample points projects
inside the image in front of the camera (:func:`~oddsparse.geometry.unproject.project_visibility`).
The voxel is *foreground in that view* when at least one of its sample points lands on a pixel
whose foreground value is ``>= threshold`` (the pixel containing the point: nearest lookup, no
interpolation). The voxel survives when it is seen by at least ``min_views`` views and at most
``tolerance`` of the views that see it disagree (see background).

Why several sample points: objects of the published scenes are ~7 cm tall while voxels are
4 cm, about 1.5 px at 256 px; testing the centre alone lets a thin part fall between pixels in
one view and carves away a voxel the object really occupies. ``subdivisions = s`` tests the
``s**3`` sub-cell centres of each voxel (``s = 1``: the centre; ``s = 2``: the 8 points half-way
from the centre to the corners, at +-1/4 voxel; ``s = 3``: a 3x3x3 lattice including the centre).
This errs on the side of keeping voxels, as a visual hull should.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor

from oddsparse.geometry.grid import VoxelGrid
from oddsparse.geometry.cameras import project_points
from oddsparse.geometry.unproject import project_visibility
from oddsparse.structures.sparse import SparseVoxels

__all__ = ["carve_occupancy", "voxel_sample_offsets", "dilate_occupancy", "culled_blocks"]


def voxel_sample_offsets(subdivisions: int, dtype=torch.float32, device=None) -> Tensor:
    """(s**3, 3) offsets, in voxels, from a voxel centre to the centres of its s x s x s sub-cells."""
    if subdivisions < 1:
        raise ValueError(f"subdivisions must be >= 1, got {subdivisions}")
    steps = [(k + 0.5) / subdivisions - 0.5 for k in range(subdivisions)]
    return torch.tensor(list(itertools.product(steps, steps, steps)), dtype=dtype, device=device)


def dilate_occupancy(mask: Tensor, voxels: int) -> Tensor:
    """Grow a (B, X, Y, Z) bool mask by ``voxels`` in every direction (cube structuring element)."""
    if voxels <= 0:
        return mask
    kernel = 2 * voxels + 1
    grown = F.max_pool3d(mask[:, None].float(), kernel_size=kernel, stride=1, padding=voxels)
    return grown[:, 0] > 0


def carve_occupancy(foreground: Tensor, K: Tensor, world_to_cam: Tensor, grid: VoxelGrid, *,
                    threshold: float = 0.5, tolerance: float = 0, min_views: int = 1, dilation: int = 0,
                    subdivisions: int = 2, near: float = 1e-3, view_chunk: int = 1, block: int = 8) -> SparseVoxels:
    """Carve the voxels of ``grid`` with per-view foreground maps.

    Args:
        foreground: (V, H, W) or (B, V, H, W) foreground probabilities or bool masks.
        K: (V, 3, 3) or (B, V, 3, 3) intrinsics for the (H, W) images. world_to_cam: (..., V, 4, 4).
        threshold: a pixel is foreground when its value is ``>= threshold``.
        tolerance: views allowed to see background: an int (a count) or a float in (0, 1) (a
            fraction of the views that see the voxel).
        min_views: a voxel must be seen by at least this many views to survive.
        dilation: grow the carved occupancy by this many voxels (3D max-pool) at the end.
        subdivisions: s; the voxel is tested at its ``s**3`` sub-cell centres (see module docstring).
        near: minimum camera z for a view to see a point.
        view_chunk: views projected at once; voxels that can no longer survive are dropped between chunks.
        block: edge, in voxels, of the blocks culled before any voxel is projected (0 or 1: no culling).
            A block is dropped when more views than ``tolerance`` allows see all of it and find no
            foreground pixel in the rectangle around its projected corners (:func:`culled_blocks`);
            the result is exactly that of testing every voxel, at a fraction of the cost.
    Returns:
        :class:`SparseVoxels` of the surviving voxels, rows in (batch, ix, iy, iz) order,
        ``feats`` (N, 1) = fraction of the views seeing the voxel that see foreground (0 for
        voxels added by dilation). Unbatched input gives B = 1.

    Example:
        >>> from oddsparse.geometry.cameras import orbit_cameras, default_intrinsics
        >>> grid = VoxelGrid(shape=(8, 8, 4), voxel_size=0.1, origin=(-0.4, -0.4, 0.0))
        >>> w2c = orbit_cameras(4, radius=2.0, elevation_deg=30.0).float()
        >>> occupancy = carve_occupancy(torch.ones(4, 32, 32, dtype=torch.bool), default_intrinsics(32).expand(4, 3, 3), w2c, grid)
        >>> occupancy.num_voxels  # all-foreground masks keep every voxel
        256
    """
    if foreground.dim() == 3:
        foreground, K, world_to_cam = foreground[None], K[None], world_to_cam[None]
    if foreground.dim() != 4:
        raise ValueError(f"carve_occupancy: foreground must be (V, H, W) or (B, V, H, W), got {tuple(foreground.shape)}")
    if tolerance < 0:
        raise ValueError(f"carve_occupancy: tolerance must be >= 0, got {tolerance}")
    batch, views, height, width = foreground.shape
    dtype = torch.float64 if K.dtype == torch.float64 else torch.float32
    K = K.expand(batch, views, 3, 3).to(dtype)
    world_to_cam = world_to_cam.expand(batch, views, 4, 4).to(dtype)
    is_foreground = foreground >= threshold if foreground.dtype != torch.bool else foreground  # (B, V, H, W)

    device = foreground.device
    centres = grid.voxel_centers(grid.all_indices(device=device), dtype=dtype)  # (N, 3)
    offsets = voxel_sample_offsets(subdivisions, dtype=dtype, device=device) * grid.voxel_size  # (S, 3)
    points = (centres[:, None] + offsets[None]).reshape(-1, 3)  # (N*S, 3)
    num_voxels, samples = centres.shape[0], offsets.shape[0]

    fractional = isinstance(tolerance, float) and 0 < tolerance < 1
    # Most voxels fail in the first views: drop a voxel as soon as its disagreements exceed what any
    # final view count could allow (exact: the final test below uses the complete counts).
    max_disagree = tolerance * views if fractional else tolerance
    occupied, agreement = [], []
    for b in range(batch):
        if block > 1:
            alive = _block_survivors(is_foreground[b], K[b], world_to_cam[b], grid, block, max_disagree, near)
        else:
            alive = torch.arange(num_voxels, device=device)
        seen = torch.zeros(num_voxels, dtype=torch.long, device=device)
        agree = torch.zeros(num_voxels, dtype=torch.long, device=device)
        for start in range(0, views, view_chunk):
            if alive.numel() == 0:  # everything carved away already
                break
            stop = min(views, start + view_chunk)
            alive_points = points.reshape(num_voxels, samples, 3)[alive].reshape(-1, 3)
            uv, visible = project_visibility(alive_points, K[b, start:stop], world_to_cam[b, start:stop],
                                             (height, width), near)  # (v, n*S, 2), (v, n*S)
            col = uv[..., 0].clamp(0, width - 1).floor().long()  # pixel containing the point
            row = uv[..., 1].clamp(0, height - 1).floor().long()
            view_index = torch.arange(start, stop, device=device)[:, None]
            hit = is_foreground[b][view_index, row, col] & visible  # (v, n*S)
            seen_view = visible.reshape(-1, alive.numel(), samples).any(dim=-1).sum(dim=0)  # (n,)
            hit_view = hit.reshape(-1, alive.numel(), samples).any(dim=-1).sum(dim=0)
            seen[alive] += seen_view
            agree[alive] += hit_view
            alive = alive[(seen[alive] - agree[alive]) <= max_disagree]
        disagree = seen - agree
        if fractional:
            allowed = disagree.to(dtype) <= tolerance * seen.to(dtype)
        else:
            allowed = disagree <= tolerance
        keep = torch.zeros(num_voxels, dtype=torch.bool, device=device)
        keep[alive] = True
        keep &= (seen >= min_views) & allowed
        occupied.append(keep.reshape(grid.shape))
        fraction = agree.to(torch.float32) / seen.clamp(min=1).to(torch.float32)
        agreement.append(torch.where(keep, fraction, torch.zeros_like(fraction)).reshape(grid.shape))
    mask = dilate_occupancy(torch.stack(occupied), int(dilation))  # (B, X, Y, Z)
    fraction = torch.stack(agreement)[:, None]  # (B, 1, X, Y, Z)
    return SparseVoxels.from_dense(fraction, grid, mask=mask)


def culled_blocks(is_foreground: Tensor, K: Tensor, world_to_cam: Tensor, grid: VoxelGrid, block: int,
                  max_disagree: float, near: float = 1e-3) -> Tensor:
    """(bx, by, bz) bool: blocks of ``block**3`` voxels whose every voxel must fail carving.

    For each view, a block's axis-aligned extent (which holds every sample point of its voxels) is
    projected by its 8 corners. When all corners are in front of the camera (``z > near``) and inside
    the image, the whole block is (perspective maps the convex box onto the convex hull of the
    projected corners), so every sample point is seen by that view and lands on a pixel of the
    rectangle ``[floor(u_min), floor(u_max)] x [floor(v_min), floor(v_max)]``; if that rectangle holds
    no foreground pixel (a summed-area table tells), every voxel of the block disagrees with the
    view. A block that disagrees with more than ``max_disagree`` views cannot hold a surviving voxel.

    Args:
        is_foreground: (V, H, W) bool. K: (V, 3, 3). world_to_cam: (V, 4, 4).
    """
    views, height, width = is_foreground.shape
    device, dtype = is_foreground.device, K.dtype
    shape = torch.tensor(grid.shape, device=device)
    counts = (shape + block - 1) // block  # blocks per axis
    index = torch.stack(torch.meshgrid(*(torch.arange(int(c), device=device) for c in counts), indexing="ij"), -1)
    low = (index * block).reshape(-1, 3)  # first voxel of each block
    high = torch.minimum(low + block, shape)  # one past its last voxel
    corners = torch.tensor(list(itertools.product((0, 1), repeat=3)), device=device)  # (8, 3)
    voxel_corner = torch.where(corners[None].bool(), high[:, None], low[:, None])  # (nb, 8, 3) voxel units
    origin = torch.as_tensor(grid.origin, dtype=dtype, device=device)
    points = origin + voxel_corner.to(dtype) * grid.voxel_size  # (nb, 8, 3) metres
    uv, depth = project_points(points.reshape(-1, 3), K, world_to_cam)  # (V, nb*8, 2), (V, nb*8)
    uv, depth = uv.reshape(views, -1, 8, 2), depth.reshape(views, -1, 8)
    inside = ((depth > near) & (uv[..., 0] >= 0) & (uv[..., 0] < width) & (uv[..., 1] >= 0)
              & (uv[..., 1] < height)).all(dim=-1)  # (V, nb)
    col0, col1 = uv[..., 0].amin(-1), uv[..., 0].amax(-1)
    row0, row1 = uv[..., 1].amin(-1), uv[..., 1].amax(-1)
    col0, col1 = (col0.clamp(0, width - 1).floor().long(), col1.clamp(0, width - 1).floor().long() + 1)
    row0, row1 = (row0.clamp(0, height - 1).floor().long(), row1.clamp(0, height - 1).floor().long() + 1)
    table = F.pad(is_foreground.to(torch.int32).cumsum(1).cumsum(2), (1, 0, 1, 0))  # (V, H+1, W+1)
    view = torch.arange(views, device=device)[:, None]
    foreground = table[view, row1, col1] - table[view, row0, col1] - table[view, row1, col0] + table[view, row0, col0]
    disagree = (inside & (foreground == 0)).sum(dim=0)  # (nb,)
    return (disagree > max_disagree).reshape(*(int(c) for c in counts))


def _block_survivors(is_foreground: Tensor, K: Tensor, world_to_cam: Tensor, grid: VoxelGrid, block: int,
                     max_disagree: float, near: float) -> Tensor:
    """Flat indices (row-major over the grid) of the voxels in blocks :func:`culled_blocks` keeps."""
    culled = culled_blocks(is_foreground, K, world_to_cam, grid, block, max_disagree, near)
    keep = ~culled.repeat_interleave(block, 0).repeat_interleave(block, 1).repeat_interleave(block, 2)
    keep = keep[:grid.shape[0], :grid.shape[1], :grid.shape[2]]
    return torch.nonzero(keep.reshape(-1))[:, 0]
