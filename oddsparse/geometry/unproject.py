"""Unprojection of per-view 2D feature maps into voxels.

Each voxel centre is projected into every view (:func:`~oddsparse.geometry.cameras.project_points`);
a view *sees* the voxel when the centre lands inside the image (``0 <= u < W``, ``0 <= v < H``)
and in front of the camera (``z > near``). The voxel's feature is the mean, over the views
that see it, of the bilinearly sampled feature maps; voxels seen by no view get zeros.

Feature maps may have any size ``(h, w)`` (a stride-s encoder output): they are taken to
cover the full ``(H, W)`` image for which ``K`` is given, and are sampled with
``grid_sample(align_corners=False)`` at the full-resolution pixel coordinates mapped by
:func:`~oddsparse.geometry.conventions.pixels_to_grid_sample` (so a feature map's cell centres
sit at the centres of the image blocks they summarise).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from oddsparse.geometry.cameras import project_points
from oddsparse.geometry.conventions import pixels_to_grid_sample
from oddsparse.geometry.grid import VoxelGrid
from oddsparse.structures.sparse import SparseVoxels

__all__ = ["unproject_features", "project_visibility", "sample_views"]


def project_visibility(points_world: Tensor, K: Tensor, world_to_cam: Tensor, image_size: tuple[int, int],
                       near: float = 1e-3) -> tuple[Tensor, Tensor]:
    """Project points into views and say which views see them.

    Args:
        points_world: (P, 3). K: (V, 3, 3) for an image of ``image_size`` = (H, W). world_to_cam: (V, 4, 4).
    Returns:
        ``(uv_pixels, visible)``: (V, P, 2) pixel coordinates and (V, P) bool (inside the image and
        ``z_cam > near``).
    """
    height, width = image_size
    uv, depth = project_points(points_world, K, world_to_cam)  # (V, P, 2), (V, P)
    visible = (depth > near) & (uv[..., 0] >= 0) & (uv[..., 0] < width) & (uv[..., 1] >= 0) & (uv[..., 1] < height)
    return uv, visible


def _mean_over_views(features: Tensor, K: Tensor, world_to_cam: Tensor, image_size: tuple[int, int],
                     points_world: Tensor, near: float, view_chunk: int,
                     weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mean of bilinear samples over visible views for one scene.

    Args:
        features: (V, C, h, w). K: (V, 3, 3). world_to_cam: (V, 4, 4). points_world: (P, 3).
        weights: optional (V, P) weight of each view's sample (the mean is then weighted).
    Returns:
        (P, C) mean features (zeros where unseen) and (P,) int64 view counts, or with ``weights`` the (P,)
        sum of the weights of the views that see each point.
    """
    views, channels = features.shape[:2]
    height, width = image_size
    total = features.new_zeros(channels, points_world.shape[0])
    if weights is None:
        count = torch.zeros(points_world.shape[0], dtype=torch.long, device=features.device)
    else:
        count = features.new_zeros(points_world.shape[0])
    for start in range(0, views, view_chunk):
        stop = min(views, start + view_chunk)
        uv, visible = project_visibility(points_world, K[start:stop], world_to_cam[start:stop], image_size, near)
        # Clamp so that invisible points (uv meaningless, maybe huge) stay finite; they are masked below.
        uv = torch.stack([uv[..., 0].clamp(-1.0, width + 1.0), uv[..., 1].clamp(-1.0, height + 1.0)], dim=-1)
        sample_grid = pixels_to_grid_sample(uv, height, width)[:, None]  # (v, 1, P, 2)
        sampled = F.grid_sample(features[start:stop], sample_grid.to(features.dtype), mode="bilinear",
                                padding_mode="border", align_corners=False)[:, :, 0]  # (v, C, P)
        if weights is None:
            total = total + (sampled * visible[:, None].to(features.dtype)).sum(dim=0)
            count = count + visible.sum(dim=0)
        else:
            weight = weights[start:stop].to(features.dtype) * visible.to(features.dtype)  # (v, P)
            total = total + (sampled * weight[:, None]).sum(dim=0)
            count = count + weight.sum(dim=0)
    if weights is None:
        mean = total / count.clamp(min=1).to(features.dtype)
    else:
        mean = torch.where(count > 0, total / torch.where(count > 0, count, torch.ones_like(count)), 0.0)
    return mean.transpose(0, 1), count


def sample_views(features: Tensor, K: Tensor, world_to_cam: Tensor, image_size: tuple[int, int], points_world: Tensor,
                 weights: Tensor | None = None, *, near: float = 1e-3, view_chunk: int = 4) -> tuple[Tensor, Tensor]:
    """Read per-view feature maps (or images) at world points: the mean over the views that see each point.

    The sampling of :func:`unproject_features` at arbitrary points (e.g. RoI cell centres) instead of voxel
    centres, optionally weighted per view and point: with the transmittance of
    :func:`~oddsparse.renderers.raymarch.point_transmittance` as ``weights``, views that see a point only
    through something opaque count little, so a point takes the colour of the views that see it.

    Args:
        features: (V, C, h, w) maps covering the full (H, W) image of ``K``. K: (V, 3, 3). world_to_cam: (V, 4, 4).
        image_size: (H, W). points_world: (P, 3). weights: optional (V, P) non-negative.
    Returns:
        ``(values, support)``: (P, C) mean (weighted) samples, zeros where no view (or no weight) sees the
        point, and (P,) the number of views that see each point (int64), or with ``weights`` their summed weight.

    Example:
        >>> from oddsparse.geometry.cameras import orbit_cameras, default_intrinsics
        >>> w2c = orbit_cameras(2, radius=2.0, elevation_deg=30.0).float()
        >>> maps = torch.stack([torch.full((1, 8, 8), 1.0), torch.full((1, 8, 8), 3.0)])
        >>> values, support = sample_views(maps, default_intrinsics(32).expand(2, 3, 3), w2c, (32, 32),
        ...                                torch.zeros(1, 3), torch.tensor([[1.0], [3.0]]))
        >>> values, support  # (1 * 1 + 3 * 3) / (1 + 3)
        (tensor([[2.5000]]), tensor([4.]))
    """
    if features.dim() != 4 or K.shape != (features.shape[0], 3, 3) or world_to_cam.shape != (features.shape[0], 4, 4):
        raise ValueError(f"sample_views: features must be (V, C, h, w) with K (V, 3, 3) and world_to_cam (V, 4, 4), got "
                         f"{tuple(features.shape)}, {tuple(K.shape)} and {tuple(world_to_cam.shape)}")
    if points_world.dim() != 2 or points_world.shape[1] != 3:
        raise ValueError(f"sample_views: points_world must be (P, 3), got {tuple(points_world.shape)}")
    if weights is not None and weights.shape != (features.shape[0], points_world.shape[0]):
        raise ValueError(f"sample_views: weights must be (V, P) = {(features.shape[0], points_world.shape[0])}, got "
                         f"{tuple(weights.shape)}")
    return _mean_over_views(features, K.to(features.dtype), world_to_cam.to(features.dtype),
                            (int(image_size[0]), int(image_size[1])), points_world.to(features.dtype), near,
                            view_chunk, weights)


def unproject_features(features: Tensor, K: Tensor, world_to_cam: Tensor, image_size: tuple[int, int],
                       grid: VoxelGrid, coords: Tensor | SparseVoxels | None = None, *, near: float = 1e-3,
                       view_chunk: int = 4):
    """Lift per-view feature maps into a voxel grid (mean over the views that see each voxel).

    Args:
        features: (B, V, C, h, w) or (V, C, h, w) feature maps covering the full image.
        K: (B, V, 3, 3) or (V, 3, 3) intrinsics for the full image size ``image_size`` = (H, W).
        world_to_cam: (B, V, 4, 4) or (V, 4, 4) OpenCV extrinsics.
        grid: the :class:`VoxelGrid`.
        coords: ``None`` for the dense grid, or the sparse sites to fill: a :class:`SparseVoxels`
            (its coordinates are used) or an (N, 4) integer tensor of ``(batch, ix, iy, iz)`` rows.
            Unbatched inputs are scene 0.
        near: minimum camera z for a view to see a voxel centre.
        view_chunk: views processed at once (memory vs speed).
    Returns:
        Dense: ``(volume, count)``: (B, C, X, Y, Z) mean features and (B, X, Y, Z) int64 view counts.
        Sparse: ``(SparseVoxels, count)``: feats (N, C) in the order of ``coords``, and (N,) counts.
        Unbatched inputs give B = 1. Differentiable in ``features``.

    Example:
        >>> grid = VoxelGrid(shape=(4, 4, 2), voxel_size=0.1, origin=(-0.2, -0.2, 0.0))
        >>> from oddsparse.geometry.cameras import orbit_cameras, default_intrinsics
        >>> w2c = orbit_cameras(3, radius=2.0, elevation_deg=30.0).float()
        >>> K = default_intrinsics(64).expand(3, 3, 3)
        >>> volume, count = unproject_features(torch.rand(3, 8, 16, 16), K, w2c, (64, 64), grid)
        >>> volume.shape, count.shape
        (torch.Size([1, 8, 4, 4, 2]), torch.Size([1, 4, 4, 2]))
    """
    if features.dim() == 4:
        features, K, world_to_cam = features[None], K[None], world_to_cam[None]
    if features.dim() != 5:
        raise ValueError(f"unproject_features: features must be (B, V, C, h, w) or (V, C, h, w), got {tuple(features.shape)}")
    batch, views = features.shape[:2]
    if K.shape[-2:] != (3, 3) or world_to_cam.shape[-2:] != (4, 4):
        raise ValueError(f"unproject_features: K must be (..., 3, 3) and world_to_cam (..., 4, 4), got "
                         f"{tuple(K.shape)} and {tuple(world_to_cam.shape)}")
    K = K.expand(batch, views, 3, 3).to(features.dtype)
    world_to_cam = world_to_cam.expand(batch, views, 4, 4).to(features.dtype)
    image_size = (int(image_size[0]), int(image_size[1]))

    if coords is None:
        points = grid.voxel_centers(grid.all_indices(device=features.device), dtype=features.dtype)  # (X*Y*Z, 3)
        means, counts = [], []
        for b in range(batch):
            mean, count = _mean_over_views(features[b], K[b], world_to_cam[b], image_size, points, near, view_chunk)
            means.append(mean.transpose(0, 1).reshape(-1, *grid.shape))  # (C, X, Y, Z)
            counts.append(count.reshape(grid.shape))
        return torch.stack(means), torch.stack(counts)

    index = coords.coords if isinstance(coords, SparseVoxels) else coords
    if index.dim() != 2 or index.shape[1] != 4:
        raise ValueError(f"unproject_features: coords must be (N, 4) (batch, ix, iy, iz), got {tuple(index.shape)}")
    index = index.to(features.device)
    channels = features.shape[2]
    feats = features.new_zeros(index.shape[0], channels)
    count = torch.zeros(index.shape[0], dtype=torch.long, device=features.device)
    batch_index = index[:, 0].long()
    if batch_index.numel() and (batch_index.min() < 0 or batch_index.max() >= batch):
        raise ValueError(f"unproject_features: coords batch column must lie in [0, {batch}), got "
                         f"[{int(batch_index.min())}, {int(batch_index.max())}]")
    for b in range(batch):
        rows = torch.nonzero(batch_index == b)[:, 0]
        if rows.numel() == 0:
            continue
        points = grid.voxel_centers(index[rows, 1:], dtype=features.dtype)
        mean, n_views = _mean_over_views(features[b], K[b], world_to_cam[b], image_size, points, near, view_chunk)
        feats = feats.index_put((rows,), mean)
        count[rows] = n_views
    sparse = SparseVoxels(coords=index.to(torch.int32), feats=feats, batch_size=batch, grid=grid)
    return sparse, count
