"""The conventions of oddsparse.geometry.conventions, checked on synthetic and real data."""
import pytest
import torch

from oddsparse.geometry import VoxelGrid, default_intrinsics, project_points, unproject_pixels
from oddsparse.geometry.conventions import PIXEL_CENTER_OFFSET, pixel_centers, pixels_to_grid_sample
from sample_scene import load_sample_scene


def test_pixel_centres_synthetic():
    centres = pixel_centers(3, 4)
    assert centres[2, 3].tolist() == [3.5, 2.5]
    # the image of a 256 px camera is centred on the principal point (128, 128) only with +0.5 centres
    K = default_intrinsics(256, dtype=torch.float64)
    points = unproject_pixels(pixel_centers(256, 256, dtype=torch.float64).reshape(-1, 2),
                              torch.ones(256 * 256, dtype=torch.float64), K, torch.eye(4, dtype=torch.float64))
    torch.testing.assert_close(points[:, :2].mean(dim=0), torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    # grid_sample's align_corners=False edges are the image edges u = 0 and u = W
    edges = pixels_to_grid_sample(torch.tensor([[0.0, 0.0], [4.0, 3.0]]), 3, 4)
    assert edges.tolist() == [[-1.0, -1.0], [1.0, 1.0]]


def _reprojection_residual(scene, shift: float, pairs) -> float:
    """Median |depth_b(reprojected) - z_b| (m) of view a's depth moved into view b, with pixel centres
    taken at index + 0.5 + shift both when back-projecting and when reading view b's depth."""
    _, height, width = scene.depth.shape
    residuals = []
    for a, b in pairs:
        valid = torch.isfinite(scene.depth[a])
        uv = (pixel_centers(height, width, dtype=torch.float64) + shift)[valid]
        points = unproject_pixels(uv, scene.depth[a][valid], scene.K[a], scene.world_to_cam[a])
        uv_b, z_b = project_points(points, scene.K[b], scene.world_to_cam[b])
        cell = uv_b - PIXEL_CENTER_OFFSET - shift  # continuous index, pixel centres at integers
        base = cell.floor().long()
        ok = (base >= 0).all(dim=-1) & (base[:, 0] < width - 1) & (base[:, 1] < height - 1)
        base, t, z_b = base[ok], cell[ok] - base[ok], z_b[ok]
        depth_b = scene.depth[b]
        value = ((1 - t[:, 0]) * (1 - t[:, 1]) * depth_b[base[:, 1], base[:, 0]]
                 + t[:, 0] * (1 - t[:, 1]) * depth_b[base[:, 1], base[:, 0] + 1]
                 + (1 - t[:, 0]) * t[:, 1] * depth_b[base[:, 1] + 1, base[:, 0]]
                 + t[:, 0] * t[:, 1] * depth_b[base[:, 1] + 1, base[:, 0] + 1])
        finite = torch.isfinite(value)
        residuals.append((value[finite] - z_b[finite]).abs())
    return float(torch.cat(residuals).median())


def test_pixel_centres_real_scene():
    scene = load_sample_scene()
    pairs = [(0, 5), (3, 12), (7, 9)]
    at_half = _reprojection_residual(scene, 0.0, pairs)
    for shift in (-0.5, -0.25, 0.25):
        assert at_half * 5 < _reprojection_residual(scene, shift, pairs), shift


def test_voxel_index_centre_round_trip():
    grid = VoxelGrid()
    index = grid.all_indices()[::97]
    centres = grid.voxel_centers(index, dtype=torch.float64)
    assert torch.equal(grid.world_to_index(centres), index)
    assert torch.equal(grid.world_to_index(centres + 0.49 * grid.voxel_size), index)
    # index order follows world axes: +1 in ix moves the centre along world x only
    step = grid.voxel_centers(torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]])) - grid.voxel_centers(
        torch.zeros(3, 3, dtype=torch.long))
    torch.testing.assert_close(step, torch.eye(3) * grid.voxel_size)
    assert grid.voxel_centers(torch.zeros(1, 3, dtype=torch.long))[0, 2].item() == pytest.approx(grid.voxel_size / 2)  # floor z = 0
    assert torch.equal(grid.all_indices()[grid.linear_index(index)], index)
