"""Cameras against hand-computed values and self-consistency (real-scene checks: test_real_scene.py)."""
import math

import pytest
import torch

from oddsparse.geometry import cameras
from oddsparse.geometry.conventions import pixel_centers, pixels_to_grid_sample


def test_project_hand_computed():
    K = torch.tensor([[100.0, 0.0, 50.0], [0.0, 200.0, 40.0], [0.0, 0.0, 1.0]])
    world_to_cam = torch.eye(4)
    world_to_cam[:3, 3] = torch.tensor([0.0, 0.0, 1.0])  # camera 1 m behind the world origin
    points = torch.tensor([[0.1, -0.2, 1.0], [0.0, 0.0, 0.0]])
    uv, depth = cameras.project_points(points, K, world_to_cam)
    # z_cam = 2 -> u = 100 * 0.1 / 2 + 50 = 55, v = 200 * -0.2 / 2 + 40 = 20
    assert torch.allclose(uv, torch.tensor([[55.0, 20.0], [50.0, 40.0]]))
    assert torch.allclose(depth, torch.tensor([2.0, 1.0]))


def test_look_at_axes():
    eye = torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64)
    w2c = cameras.look_at(eye, torch.zeros(3, dtype=torch.float64))
    # forward (+z cam) points from eye to target = -x world; world up (+z) is image up (-y cam)
    assert torch.allclose(w2c[2, :3], torch.tensor([-1.0, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(w2c[1, :3], torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64))
    assert torch.allclose(cameras.camera_centers(w2c), eye)
    assert torch.allclose(w2c[:3, :3] @ w2c[:3, :3].T, torch.eye(3, dtype=torch.float64))
    assert torch.det(w2c[:3, :3]) > 0


def test_look_at_refuses_a_camera_looking_along_up():
    """Straight down there is no image 'up' axis (the cross product with up vanishes): a clear error, not a
    rank-1 'rotation'; a camera just off the vertical is still a rotation."""
    with pytest.raises(ValueError, match="camera 1 looks along up"):
        cameras.look_at(torch.tensor([[1.0, 0, 2], [0, 0, 2]], dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="looks along up"):
        cameras.orbit_cameras(2, radius=2.0, elevation_deg=90.0)
    w2c = cameras.look_at(torch.tensor([1e-3, 0, 2], dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(w2c[:3, :3] @ w2c[:3, :3].T, torch.eye(3, dtype=torch.float64), atol=1e-9)


def test_orbit_cameras_look_at_target_with_elevation():
    target = (0.1, -0.2, 0.05)
    w2c = cameras.orbit_cameras(8, radius=1.5, elevation_deg=30.0, target=target)
    K = cameras.default_intrinsics(256, dtype=torch.float64)
    uv, depth = cameras.project_points(torch.tensor([target], dtype=torch.float64), K, w2c)
    assert torch.allclose(uv, torch.full_like(uv, 128.0))
    assert torch.allclose(depth, torch.full_like(depth, 1.5))
    centers = cameras.camera_centers(w2c)
    elevation = torch.rad2deg(torch.asin((centers[:, 2] - target[2]) / 1.5))
    assert torch.allclose(elevation, torch.full_like(elevation, 30.0))


def test_unproject_inverts_project():
    generator = torch.Generator().manual_seed(0)
    w2c = cameras.orbit_cameras(3, radius=2.0, elevation_deg=25.0)
    K = cameras.default_intrinsics(128, dtype=torch.float64).expand(3, 3, 3)
    points = torch.rand(3, 50, 3, generator=generator, dtype=torch.float64) - 0.5
    uv, depth = cameras.project_points(points, K, w2c)
    back = cameras.unproject_pixels(uv, depth, K, w2c)
    assert torch.allclose(back, points, atol=1e-10)


def test_pixel_rays_pass_through_pixels_at_unit_depth():
    w2c = cameras.orbit_cameras(2, radius=1.0, elevation_deg=30.0)
    K = cameras.default_intrinsics(16, dtype=torch.float64).expand(2, 3, 3)
    origins, directions = cameras.pixel_rays(K, w2c, 16, 16)
    uv, depth = cameras.project_points(origins + 0.7 * directions, K, w2c)
    expected = pixel_centers(16, 16, dtype=torch.float64).reshape(1, -1, 2).expand_as(uv)
    assert torch.allclose(uv, expected, atol=1e-9)
    assert torch.allclose(depth, torch.full_like(depth, 0.7))


def test_unproject_depth_marks_background_invalid():
    K = cameras.default_intrinsics(8)
    depth = torch.full((8, 8), 2.0)
    depth[0, 0] = float("inf")
    points, valid = cameras.unproject_depth(depth, K, torch.eye(4))
    assert not valid[0, 0] and valid.sum() == 63
    assert torch.isnan(points[0, 0]).all()
    assert torch.allclose(points[4, 4], torch.tensor([2.0 * 0.5 / K[0, 0], 2.0 * 0.5 / K[1, 1], 2.0]))


@pytest.mark.parametrize("factor", [0.5, 2.0, 0.25])
def test_scale_intrinsics_matches_resized_pixel_grid(factor):
    """A point projecting to the centre of pixel (i, j) at full size lands at the matching
    continuous position of the resized image (index + 0.5 convention)."""
    K = cameras.default_intrinsics(256, dtype=torch.float64)
    point = torch.tensor([[0.03, -0.02, 1.0]], dtype=torch.float64)
    uv, _ = cameras.project_points(point, K, torch.eye(4, dtype=torch.float64))
    uv_scaled, _ = cameras.project_points(point, cameras.scale_intrinsics(K, factor, factor),
                                          torch.eye(4, dtype=torch.float64))
    assert torch.allclose(uv_scaled, uv * factor)
    # the image edges map to the grid_sample edges in both resolutions
    edge = pixels_to_grid_sample(torch.tensor([[0.0, 0.0], [256.0, 256.0]]), 256, 256)
    assert torch.equal(edge, torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))


def test_pixel_centers_offset():
    centers = pixel_centers(3, 4)
    assert centers.shape == (3, 4, 2)
    assert torch.equal(centers[2, 1], torch.tensor([1.5, 2.5]))


def test_pytorch3d_conversion_round_trip_without_pytorch3d_raises_clearly():
    from oddsparse._backends import has_pytorch3d

    if has_pytorch3d():
        pytest.skip("pytorch3d is installed: covered by test_pytorch3d_cameras_project_identically")
    with pytest.raises(ModuleNotFoundError, match="pytorch3d"):
        cameras.to_pytorch3d_cameras(cameras.default_intrinsics()[None], torch.eye(4)[None], (256, 256))


def _has_pytorch3d():
    from oddsparse._backends import has_pytorch3d

    return has_pytorch3d()


@pytest.mark.skipif(not _has_pytorch3d(), reason="pytorch3d is not installed (optional backend, conda only)")
def test_pytorch3d_cameras_project_identically():
    w2c = cameras.orbit_cameras(4, radius=1.2, elevation_deg=28.0).float()
    K = cameras.default_intrinsics(256).expand(4, 3, 3).contiguous()
    points = torch.rand(4, 30, 3) * 0.4 - 0.2
    uv, _ = cameras.project_points(points, K, w2c)
    p3d = cameras.to_pytorch3d_cameras(K, w2c, (256, 256))
    screen = p3d.transform_points_screen(points)[..., :2]
    # PyTorch3D's screen space has +x left / +y up flipped into pixel space by its own convention:
    # both must give the same pixel coordinates.
    assert torch.allclose(screen, uv, atol=1e-3)
    K_back, w2c_back = cameras.from_pytorch3d_cameras(p3d)
    assert torch.allclose(K_back, K) and torch.allclose(w2c_back, w2c, atol=1e-6)
