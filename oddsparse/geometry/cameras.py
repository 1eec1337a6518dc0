"""Pinhole cameras in the OpenCV convention (see :mod:`oddsparse.geometry.conventions`).

Shapes: V views, P points, H/W image size, R rays. ``K`` is ``(..., 3, 3)``, ``world_to_cam``
is ``(..., 4, 4)``; leading dimensions broadcast.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from oddsparse.geometry.conventions import pixel_centers

__all__ = [
    "transform_points",
    "project_points",
    "unproject_pixels",
    "unproject_depth",
    "pixel_rays",
    "camera_centers",
    "look_at",
    "orbit_cameras",
    "default_intrinsics",
    "scale_intrinsics",
    "to_pytorch3d_cameras",
    "from_pytorch3d_cameras",
]


def transform_points(matrix: Tensor, points: Tensor) -> Tensor:
    """Apply a 4x4 rigid/affine ``matrix`` (..., 4, 4) to ``points`` (..., P, 3)."""
    return points @ matrix[..., :3, :3].transpose(-1, -2) + matrix[..., None, :3, 3]


def project_points(points_world: Tensor, K: Tensor, world_to_cam: Tensor, eps: float = 1e-8):
    """Project world points into views.

    Args:
        points_world: (..., P, 3).
        K: (..., 3, 3) intrinsics.
        world_to_cam: (..., 4, 4) OpenCV extrinsics.
    Returns:
        ``(uv_pixels, depth)``: (..., P, 2) pixel coordinates (index + 0.5 centres) and (..., P)
        z-depth. Points behind the camera get a negative depth; their ``uv`` is meaningless.

    Example:
        >>> K = default_intrinsics(256)
        >>> uv, z = project_points(torch.tensor([[0.0, 0.0, 2.0]]), K, torch.eye(4))
        >>> uv, z
        (tensor([[128., 128.]]), tensor([2.]))
    """
    points_cam = transform_points(world_to_cam, points_world)
    depth = points_cam[..., 2]
    safe = torch.where(depth.abs() < eps, torch.full_like(depth, eps), depth)
    uvw = points_cam @ K.transpose(-1, -2)
    uv_pixels = uvw[..., :2] / safe[..., None]
    return uv_pixels, depth


def unproject_pixels(uv_pixels: Tensor, depth: Tensor, K: Tensor, world_to_cam: Tensor) -> Tensor:
    """Inverse of :func:`project_points`: pixels (..., P, 2) at z-depths (..., P) -> world (..., P, 3)."""
    ones = torch.ones_like(uv_pixels[..., :1])
    rays_cam = torch.cat([uv_pixels, ones], dim=-1) @ torch.linalg.inv(K).transpose(-1, -2)
    points_cam = rays_cam * depth[..., None]
    return transform_points(torch.linalg.inv(world_to_cam), points_cam)


def unproject_depth(depth: Tensor, K: Tensor, world_to_cam: Tensor):
    """Back-project a z-depth map to world points.

    Args:
        depth: (..., H, W) z-depth; background is ``inf`` (or any non-finite / non-positive value).
        K: (..., 3, 3). world_to_cam: (..., 4, 4).
    Returns:
        ``(points_world, valid)``: (..., H, W, 3) and (..., H, W) bool; invalid points are NaN.
    """
    height, width = depth.shape[-2:]
    uv = pixel_centers(height, width, device=depth.device, dtype=depth.dtype)  # (H, W, 2)
    uv = uv.reshape(-1, 2).expand(*depth.shape[:-2], height * width, 2)
    valid = torch.isfinite(depth) & (depth > 0)
    flat_depth = torch.where(valid, depth, torch.full_like(depth, float("nan")))
    points = unproject_pixels(uv, flat_depth.reshape(*depth.shape[:-2], -1), K, world_to_cam)
    return points.reshape(*depth.shape, 3), valid


def camera_centers(world_to_cam: Tensor) -> Tensor:
    """Camera centres in world coordinates: (..., 4, 4) -> (..., 3)."""
    rotation = world_to_cam[..., :3, :3]
    translation = world_to_cam[..., :3, 3]
    return -(rotation.transpose(-1, -2) @ translation[..., None])[..., 0]


def pixel_rays(K: Tensor, world_to_cam: Tensor, height: int, width: int, uv_pixels: Tensor | None = None):
    """World-space rays through pixel centres.

    Args:
        K: (V, 3, 3). world_to_cam: (V, 4, 4).
        uv_pixels: optional (V, R, 2) pixel coordinates; default all H*W pixel centres, row-major.
    Returns:
        ``(origins, directions)``: (V, R, 3) each. ``directions`` are scaled so that a step of
        ``t`` along a ray reaches z-depth ``t`` (their camera-frame z component is 1); use
        ``directions.norm(dim=-1)`` to convert to Euclidean distance.
    """
    if uv_pixels is None:
        uv_pixels = pixel_centers(height, width, device=K.device, dtype=K.dtype).reshape(1, -1, 2)
        uv_pixels = uv_pixels.expand(K.shape[0], -1, -1)
    ones = torch.ones_like(uv_pixels[..., :1])
    dirs_cam = torch.cat([uv_pixels, ones], dim=-1) @ torch.linalg.inv(K).transpose(-1, -2)
    rotation = world_to_cam[..., :3, :3]
    directions = dirs_cam @ rotation  # R^T applied to row vectors: (V, R, 3)
    origins = camera_centers(world_to_cam)[..., None, :].expand_as(directions)
    return origins, directions


def look_at(eye: Tensor, target: Tensor, up=(0.0, 0.0, 1.0)) -> Tensor:
    """OpenCV world_to_cam (..., 4, 4) of cameras at ``eye`` (..., 3) looking at ``target`` (..., 3).

    The image's "up" (-y of the camera) points towards world ``up`` as far as possible; a camera that looks
    along ``up`` (straight down or up), or at its own position, has no such image axis: a ValueError.
    """
    eye = torch.as_tensor(eye, dtype=torch.float64 if not torch.is_tensor(eye) else eye.dtype)
    target = torch.as_tensor(target, dtype=eye.dtype, device=eye.device)
    up_vec = torch.as_tensor(up, dtype=eye.dtype, device=eye.device).expand_as(eye)
    forward = torch.nn.functional.normalize(target - eye, dim=-1)  # camera +z
    side = torch.linalg.cross(forward, up_vec, dim=-1)
    degenerate = side.norm(dim=-1) <= 1e-6 * up_vec.norm(dim=-1)
    if degenerate.any():
        first = int(torch.nonzero(degenerate.reshape(-1))[0, 0])
        up_given = tuple(float(u) for u in up_vec.reshape(-1, 3)[0])
        raise ValueError(f"look_at: camera {first} looks along up={up_given} (or at its own position): no image "
                         f"'up' axis; pass another up")
    right = torch.nn.functional.normalize(side, dim=-1)  # +x
    down = torch.linalg.cross(forward, right, dim=-1)  # +y
    rotation = torch.stack([right, down, forward], dim=-2)  # rows are camera axes in world
    out = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype, device=eye.device)
    out[..., :3, :3] = rotation
    out[..., :3, 3] = -(rotation @ eye[..., None])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def orbit_cameras(num_views: int, radius: float, elevation_deg: float, target=(0.0, 0.0, 0.0),
                  start_azimuth_deg: float = 0.0, dtype=torch.float64) -> Tensor:
    """world_to_cam (V, 4, 4) of ``num_views`` cameras evenly spaced on a circular orbit."""
    azimuth = torch.deg2rad(torch.tensor(start_azimuth_deg, dtype=dtype)) + torch.arange(
        num_views, dtype=dtype) * (2 * math.pi / num_views)
    elevation = math.radians(elevation_deg)
    target_t = torch.as_tensor(target, dtype=dtype)
    eye = torch.stack([
        radius * math.cos(elevation) * torch.cos(azimuth),
        radius * math.cos(elevation) * torch.sin(azimuth),
        torch.full_like(azimuth, radius * math.sin(elevation)),
    ], dim=-1) + target_t
    return look_at(eye, target_t.expand_as(eye))


def default_intrinsics(image_size: int = 256, dtype=torch.float32) -> Tensor:
    """The published datasets' K (fx = fy = 213.33, cx = cy = 128 at 256 px), scaled to ``image_size``."""
    scale = image_size / 256.0
    return torch.tensor([[640.0 / 3.0 * scale, 0.0, 128.0 * scale],
                         [0.0, 640.0 / 3.0 * scale, 128.0 * scale],
                         [0.0, 0.0, 1.0]], dtype=dtype)


def scale_intrinsics(K: Tensor, scale_x: float, scale_y: float) -> Tensor:
    """K for an image resized by (scale_x, scale_y); exact under the index + 0.5 pixel-centre convention."""
    scaled = K.clone()
    scaled[..., 0, :] = K[..., 0, :] * scale_x
    scaled[..., 1, :] = K[..., 1, :] * scale_y
    return scaled


_FLIP_XY = (-1.0, -1.0, 1.0)


def to_pytorch3d_cameras(K: Tensor, world_to_cam: Tensor, image_size: tuple[int, int]):
    """OpenCV cameras -> ``pytorch3d.renderer.PerspectiveCameras`` (screen-space intrinsics).

    PyTorch3D uses row vectors (``X_view = X_world @ R + T``) and a view frame with +x left and
    +y up, i.e. OpenCV's x and y negated. Requires pytorch3d (an optional dependency).

    Args:
        K: (V, 3, 3). world_to_cam: (V, 4, 4). image_size: (H, W).
    """
    from oddsparse._backends import require_pytorch3d

    renderer = require_pytorch3d().renderer
    flip = world_to_cam.new_tensor(_FLIP_XY)
    rotation = (flip[:, None] * world_to_cam[:, :3, :3]).transpose(-1, -2)
    translation = flip * world_to_cam[:, :3, 3]
    views = K.shape[0]
    focal = torch.stack([K[:, 0, 0], K[:, 1, 1]], dim=-1)
    principal = torch.stack([K[:, 0, 2], K[:, 1, 2]], dim=-1)
    size = torch.tensor([list(image_size)] * views)
    return renderer.PerspectiveCameras(R=rotation, T=translation, focal_length=focal,
                                       principal_point=principal, image_size=size, in_ndc=False,
                                       device=K.device)


def from_pytorch3d_cameras(cameras) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`to_pytorch3d_cameras` for screen-space ``PerspectiveCameras``: returns (K, world_to_cam)."""
    rotation = cameras.R.transpose(-1, -2)
    flip = rotation.new_tensor(_FLIP_XY)
    views = rotation.shape[0]
    world_to_cam = torch.zeros(views, 4, 4, dtype=rotation.dtype, device=rotation.device)
    world_to_cam[:, :3, :3] = flip[:, None] * rotation
    world_to_cam[:, :3, 3] = flip * cameras.T
    world_to_cam[:, 3, 3] = 1.0
    K = torch.zeros(views, 3, 3, dtype=rotation.dtype, device=rotation.device)
    K[:, 0, 0] = cameras.focal_length[:, 0]
    K[:, 1, 1] = cameras.focal_length[:, 1]
    K[:, 0, 2] = cameras.principal_point[:, 0]
    K[:, 1, 2] = cameras.principal_point[:, 1]
    K[:, 2, 2] = 1.0
    return K, world_to_cam
