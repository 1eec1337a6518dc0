"""Small random camera rigs around a small voxel grid, shared by the geometry op tests."""
import torch

from oddsparse.geometry import VoxelGrid, look_at

GRID = VoxelGrid(shape=(5, 4, 3), voxel_size=0.1, origin=(-0.25, -0.2, 0.0))
IMAGE_SIZE = (30, 40)  # (H, W), deliberately not square


def random_rig(views: int, seed: int, *, looking_away: bool = True):
    """K (V, 3, 3) and world_to_cam (V, 4, 4) float64; some views see the grid partly, one looks away."""
    gen = torch.Generator().manual_seed(seed)
    azimuth = torch.rand(views, generator=gen, dtype=torch.float64) * 6.28
    radius = 0.9 + 0.6 * torch.rand(views, generator=gen, dtype=torch.float64)
    eye = torch.stack([radius * torch.cos(azimuth), radius * torch.sin(azimuth), 0.3 + 0.5 * torch.rand(
        views, generator=gen, dtype=torch.float64)], dim=-1)
    target = (torch.rand(views, 3, generator=gen, dtype=torch.float64) - 0.5) * 0.4
    if looking_away:
        target[0] = eye[0] * 2  # view 0 looks away: the grid is behind it
    world_to_cam = look_at(eye, target)
    focal = 30 + 40 * torch.rand(views, generator=gen, dtype=torch.float64)  # narrow ones crop the grid
    K = torch.zeros(views, 3, 3, dtype=torch.float64)
    K[:, 0, 0], K[:, 1, 1] = focal, focal * 1.1
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = IMAGE_SIZE[1] / 2 + 3, IMAGE_SIZE[0] / 2 - 2, 1.0
    return K, world_to_cam
