"""GT occupancy oracles: column ray parity against trimesh's point containment and a hand count, the
visual hull, depth carving and surface colours against per-point, per-view loops and a rendered notched
box, block means against a loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from oddsparse.data.synth.voxelize import (block_mean, cell_centers, depth_observations, depth_occupancies,
                                           silhouette_occupancies, silhouette_occupancy, solid_occupancy,
                                           surface_colours)
from oddsparse.geometry.cameras import default_intrinsics, look_at, project_points
from oddsparse.geometry.grid import VoxelGrid


def _pose(yaw: float, translation) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    matrix = np.eye(4)
    matrix[:3, :3] = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]
    matrix[:3, 3] = translation
    return matrix


def test_solid_occupancy_of_an_axis_aligned_box_counts_the_centres_inside():
    # box x in [-0.05, 0.05], y in [-0.03, 0.03], z in [0.02, 0.06]; 1 cm cells with centres at k + 0.5 cm
    grid = VoxelGrid(shape=(14, 10, 8), voxel_size=0.01, origin=(-0.07, -0.05, 0.0))
    mesh = trimesh.creation.box((0.1, 0.06, 0.04))
    inside = solid_occupancy(mesh, _pose(0.0, (0.0, 0.0, 0.04)), grid)
    expected = np.zeros(grid.shape, dtype=bool)
    expected[2:12, 2:8, 2:6] = True  # centres -0.045..0.045, -0.025..0.025, 0.025..0.055
    np.testing.assert_array_equal(inside, expected)


@pytest.mark.parametrize("yaw", [0.0, 0.7, 2.9])
def test_solid_occupancy_matches_trimesh_contains_on_a_placed_union(yaw):
    from oddsparse.data.synth import meshops as mo

    # two overlapping solids: their concatenated surfaces would break parity, their union does not
    solid = mo.union([mo.box((0.12, 0.05, 0.04), (0.0, 0.0, 0.02)), mo.sphere(0.035, (0.04, 0.0, 0.05), 24)])
    mesh = mo.to_trimesh(solid)
    pose = _pose(yaw, (0.0131, -0.0213, 0.0))  # no cell centre on a face plane (parity is then a tie)
    grid = VoxelGrid(shape=(40, 40, 24), voxel_size=0.004, origin=(-0.08, -0.1, 0.0))
    inside = solid_occupancy(mesh, pose, grid)
    points_object = (cell_centers(grid).reshape(-1, 3) - pose[:3, 3]) @ pose[:3, :3]
    reference = mesh.contains(points_object).reshape(grid.shape)
    assert inside.sum() > 500
    assert (inside != reference).sum() <= 2  # ray-parity ties on tangent rays at most


def test_solid_occupancy_refuses_an_open_mesh():
    mesh = trimesh.creation.box((0.1, 0.1, 0.1))
    mesh.update_faces(np.arange(len(mesh.faces)) != 0)
    with pytest.raises(ValueError, match="watertight"):
        solid_occupancy(mesh, np.eye(4), VoxelGrid(shape=(2, 2, 2), voxel_size=0.1, origin=(-0.1, -0.1, -0.1)))


def _cameras(size: int, views: int = 3):
    angles = np.linspace(0.0, 2 * np.pi, views, endpoint=False)
    eyes = torch.tensor([[0.6 * np.cos(a), 0.6 * np.sin(a), 0.4] for a in angles], dtype=torch.float64)
    world_to_cam = look_at(eyes, torch.zeros_like(eyes))
    return default_intrinsics(size, dtype=torch.float64), world_to_cam


def _disc_masks(K, world_to_cam, size: int) -> np.ndarray:
    """Per-view masks: pixels within 3 px of the projected world origin, plus a random speckle."""
    rng = np.random.default_rng(0)
    masks = []
    for view in range(world_to_cam.shape[0]):
        uv, _ = project_points(torch.zeros(1, 3, dtype=torch.float64), K, world_to_cam[view])
        cols, rows = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
        disc = (cols - uv[0, 0].item()) ** 2 + (rows - uv[0, 1].item()) ** 2 < 9
        masks.append(disc | (rng.random((size, size)) < 0.05))
    return np.stack(masks)


def _hull_loop(masks, K, world_to_cam, grid) -> np.ndarray:
    out = np.zeros(grid.num_voxels, dtype=bool)
    for p, point in enumerate(torch.from_numpy(cell_centers(grid).reshape(-1, 3))):
        seen = agree = 0
        for view in range(len(masks)):
            uv, depth = project_points(point[None], K, world_to_cam[view])
            u, v = int(np.floor(uv[0, 0].item())), int(np.floor(uv[0, 1].item()))
            if depth.item() > 0 and 0 <= u < masks.shape[2] and 0 <= v < masks.shape[1]:
                seen += 1
                agree += bool(masks[view, v, u])
        out[p] = seen > 0 and agree == seen
    return out.reshape(grid.shape)


def test_silhouette_occupancy_matches_a_per_point_per_view_loop():
    size = 48
    K, world_to_cam = _cameras(size)
    masks = _disc_masks(K, world_to_cam, size)
    grid = VoxelGrid(shape=(12, 12, 8), voxel_size=0.02, origin=(-0.12, -0.12, -0.08))
    hull = silhouette_occupancy(masks, K, world_to_cam, grid)
    np.testing.assert_array_equal(hull, _hull_loop(masks, K, world_to_cam, grid))
    assert 0 < hull.sum() < hull.size


def test_silhouette_occupancies_of_several_image_sizes_equal_one_call_each():
    grid = VoxelGrid(shape=(8, 8, 6), voxel_size=0.02, origin=(-0.08, -0.08, -0.06))
    sets, Ks = [], []
    for size in (32, 64):
        K, world_to_cam = _cameras(size)
        sets.append(_disc_masks(K, world_to_cam, size))
        Ks.append(K)
    hulls = silhouette_occupancies(sets, Ks, world_to_cam, grid)
    for masks, K, hull in zip(sets, Ks, hulls):
        np.testing.assert_array_equal(hull, silhouette_occupancy(masks, K, world_to_cam, grid))
    with pytest.raises(ValueError, match="set 1 must be"):
        silhouette_occupancies([sets[0], sets[1][:2]], Ks, world_to_cam, grid)


def test_block_mean_matches_a_loop():
    rng = np.random.default_rng(1)
    cells = rng.random((6, 4, 8)) < 0.4
    mean = block_mean(cells, 2)
    for i, j, k in np.ndindex(*mean.shape):
        assert mean[i, j, k] == pytest.approx(cells[2 * i:2 * i + 2, 2 * j:2 * j + 2, 2 * k:2 * k + 2].mean())
    with pytest.raises(ValueError, match="not divisible"):
        block_mean(cells, 3)


def _depth_loop(depths, K, world_to_cam, grid, tolerance_px) -> tuple[np.ndarray, np.ndarray]:
    """(kept, observed) by one loop per centre and view."""
    kept = np.zeros(grid.num_voxels, dtype=bool)
    observed = np.zeros(grid.num_voxels, dtype=bool)
    for p, point in enumerate(torch.from_numpy(cell_centers(grid).reshape(-1, 3))):
        seen = carved = False
        for view in range(len(depths)):
            uv, depth = project_points(point[None], K, world_to_cam[view])
            u, v, z = int(np.floor(uv[0, 0].item())), int(np.floor(uv[0, 1].item())), depth.item()
            if z > 0 and 0 <= u < depths.shape[2] and 0 <= v < depths.shape[1]:
                seen = True
                band = tolerance_px * z / K[0, 0].item()
                carved |= z < depths[view, v, u] - band
                observed[p] |= z < depths[view, v, u] + band
        kept[p] = seen and not carved
    return kept.reshape(grid.shape), observed.reshape(grid.shape)


def _random_depths(seed: int, miss_fraction: float):
    size = 40
    K, world_to_cam = _cameras(size)
    rng = np.random.default_rng(seed)
    eye_distance = float(torch.linalg.norm(torch.tensor([0.6, 0.0, 0.4])))
    depths = eye_distance + rng.uniform(-0.1, 0.1, (3, size, size))
    depths[rng.random(depths.shape) < miss_fraction] = np.inf  # rays that hit nothing carve all they see
    return K, world_to_cam, depths, VoxelGrid(shape=(10, 10, 8), voxel_size=0.02, origin=(-0.1, -0.1, -0.08))


def test_depth_occupancies_match_a_per_point_per_view_loop():
    K, world_to_cam, depths, grid = _random_depths(2, 0.05)
    for tolerance in (0.0, 2.0):
        kept = depth_occupancies([depths], [K], world_to_cam, grid, tolerance_px=tolerance)[0]
        np.testing.assert_array_equal(kept, _depth_loop(depths, K, world_to_cam, grid, tolerance)[0])
        assert 0 < kept.sum() < kept.size
    for function in (depth_occupancies, depth_observations):  # errors name the function called
        with pytest.raises(ValueError, match=rf"^{function.__name__}: tolerance_px must be >= 0"):
            function([depths], [K], world_to_cam, grid, tolerance_px=-1.0)
        with pytest.raises(ValueError, match=rf"^{function.__name__}: set 0 must be"):
            function([depths[:2]], [K], world_to_cam, grid)


def test_depth_observations_mark_the_seen_cells_and_leave_the_hidden_ones():
    K, world_to_cam, depths, grid = _random_depths(5, 0.0)
    (kept, observed), = depth_observations([depths], [K], world_to_cam, grid, tolerance_px=1.0)
    expected_kept, expected_observed = _depth_loop(depths, K, world_to_cam, grid, 1.0)
    np.testing.assert_array_equal(kept, expected_kept)
    np.testing.assert_array_equal(observed, expected_observed)
    assert (~kept & ~observed).sum() == 0  # every carved cell was observed (in front of a surface)
    assert (kept & ~observed).any() and (kept & observed).any()  # hidden cells and the observed shell


def test_depth_carving_of_a_rendered_box_keeps_the_solid_and_carves_a_visible_notch():
    """A box with a notch in its top face, rendered from above: the silhouette hull fills the notch,
    depth carving empties it, and both keep every cell of the solid."""
    from oddsparse.data.synth import meshops as mo
    from oddsparse.geometry.cameras import pixel_rays

    solid = mo.box((0.12, 0.12, 0.06), (0.0, 0.0, 0.03)) - mo.box((0.02, 0.08, 0.03), (0.0, 0.0, 0.06))
    mesh = mo.to_trimesh(solid)
    size = 96
    eyes = torch.tensor([[0.0, 0.001, 0.6], [0.5, 0.0, 0.35], [-0.5, 0.0, 0.35]], dtype=torch.float64)
    world_to_cam = look_at(eyes, torch.zeros_like(eyes))
    K = default_intrinsics(size, dtype=torch.float64)
    origins, directions = pixel_rays(K.expand(3, 3, 3), world_to_cam, size, size)
    depths, masks = [], []
    for view in range(3):
        locations, index, _ = mesh.ray.intersects_location(origins[view].numpy(), directions[view].numpy(),
                                                           multiple_hits=False)
        t = np.full(size * size, np.inf)
        t[index] = np.einsum("ij,ij->i", locations - origins[view].numpy()[index], directions[view].numpy()[index]) \
            / np.einsum("ij,ij->i", directions[view].numpy()[index], directions[view].numpy()[index])
        depths.append(t.reshape(size, size))
        masks.append(np.isfinite(t).reshape(size, size))
    grid = VoxelGrid(shape=(40, 40, 20), voxel_size=0.004, origin=(-0.08, -0.08, 0.0))
    inside = solid_occupancy(mesh, np.eye(4), grid)
    hull = silhouette_occupancy(np.stack(masks), K, world_to_cam, grid)
    carved = depth_occupancies([np.stack(depths)], [K], world_to_cam, grid, tolerance_px=0.5)[0]
    notch = np.zeros(grid.shape, dtype=bool)
    notch[18:22, 12:28, 12:15] = True  # centres well inside the notch: |x| < 0.008, |y| < 0.032, z 0.05-0.058
    assert not inside[notch].any()
    assert hull[notch].all()  # no silhouette shows the notch
    assert not carved[notch].any()  # the top view's depth does
    # a boundary cell whose pixel's centre ray misses the box is carved by either rule (pixel aliasing)
    assert (inside & ~hull).sum() <= 0.01 * inside.sum()
    assert (inside & ~carved).sum() <= 0.01 * inside.sum()  # the tolerance spares the cells under the surface
    assert carved.sum() < hull.sum() - notch.sum()


def test_union_mesh_of_overlapping_parts_is_one_closed_surface_of_the_union_volume():
    from oddsparse.data.synth import meshops as mo
    from oddsparse.data.synth.model import Material, ObjectModel, Part

    material = Material(base_color=(0.5, 0.5, 0.5), roughness=0.5)
    # two 10 cm x 4 cm x 4 cm bars crossing at their centres: union = 2 * 160 - 4 * 4 * 4 = 256 cm^3
    bars = [trimesh.creation.box((0.1, 0.04, 0.04)), trimesh.creation.box((0.04, 0.1, 0.04))]
    model = ObjectModel("parts_test", [Part(f"bar{i}", mesh, material) for i, mesh in enumerate(bars)])
    assert len(mo.part_solids(model)) == 2
    mesh = mo.union_mesh(model)
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(256e-6, rel=1e-9)
    assert model.mesh().volume == pytest.approx(320e-6, rel=1e-9)  # the concatenation counts the overlap twice
    open_part = bars[0].copy()
    open_part.update_faces(np.arange(len(open_part.faces)) != 0)
    with pytest.raises(ValueError, match=r"parts_test part 'open'"):
        mo.part_solids(ObjectModel("parts_test", [Part("open", open_part, material)]))


def _colour_loop(images, depths, masks, K, world_to_cam, grid, tolerance_px) -> tuple[np.ndarray, np.ndarray]:
    """(mean colour (3, X, Y, Z), views) by one loop per centre and view."""
    total = np.zeros((grid.num_voxels, 3))
    views = np.zeros(grid.num_voxels, dtype=np.int32)
    for p, point in enumerate(torch.from_numpy(cell_centers(grid).reshape(-1, 3))):
        for view in range(len(depths)):
            uv, depth = project_points(point[None], K, world_to_cam[view])
            u, v, z = int(np.floor(uv[0, 0].item())), int(np.floor(uv[0, 1].item())), depth.item()
            if z > 0 and 0 <= u < depths.shape[2] and 0 <= v < depths.shape[1] and masks[view, v, u] \
                    and abs(z - depths[view, v, u]) <= tolerance_px * z / K[0, 0].item():
                total[p] += images[view, v, u]
                views[p] += 1
    mean = total / np.maximum(views, 1)[:, None]
    return mean.T.reshape(3, *grid.shape), views.reshape(grid.shape)


def test_surface_colours_match_a_per_point_per_view_loop():
    K, world_to_cam, depths, grid = _random_depths(7, 0.05)
    rng = np.random.default_rng(8)
    images = rng.integers(0, 256, (*depths.shape, 3)).astype(np.uint8)
    masks = rng.random(depths.shape) < 0.8
    for tolerance in (1.0, 4.0):
        (colour, views), = surface_colours([images], [depths], [K], world_to_cam, grid, tolerance_px=tolerance,
                                           masks=[masks])
        expected_colour, expected_views = _colour_loop(images, depths, masks, K, world_to_cam, grid, tolerance)
        np.testing.assert_array_equal(views, expected_views)
        np.testing.assert_allclose(colour, expected_colour, rtol=1e-6, atol=1e-4)
        assert (views > 1).any() and (views == 0).any()
    (_, unmasked), = surface_colours([images], [depths], [K], world_to_cam, grid, tolerance_px=4.0)
    assert (unmasked >= views).all() and (unmasked > views).any()  # masks only remove views
    with pytest.raises(ValueError, match="image set 0 must be"):
        surface_colours([images[:, :, :, :2]], [depths], [K], world_to_cam, grid)
    with pytest.raises(ValueError, match="mask set 0 must be"):
        surface_colours([images], [depths], [K], world_to_cam, grid, masks=[masks[:, 1:]])


def test_surface_colours_of_a_flat_coloured_floor_seen_from_above():
    """A camera straight above a plane at z = 0 whose pixels are all red: the cells whose centres lie within
    the tolerance band of the plane are red, seen by the one view; the cells above it show no colour."""
    size = 32
    world_to_cam = look_at(torch.tensor([[0.0, 0.001, 1.0]], dtype=torch.float64),
                           torch.zeros(1, 3, dtype=torch.float64))
    K = default_intrinsics(size, dtype=torch.float64)
    grid = VoxelGrid(shape=(4, 4, 6), voxel_size=0.01, origin=(-0.02, -0.02, -0.03))
    depth = np.full((1, size, size), 1.0)  # the plane z = 0 is 1 m in front of the camera everywhere it matters
    image = np.zeros((1, size, size, 3), dtype=np.uint8)
    image[..., 0] = 200
    # footprint of one pixel at 1 m: 1 / fx metres; a band of 0.012 m spans the cells at z = -0.005 and 0.005
    tolerance = 0.012 * K[0, 0].item()
    (colour, views), = surface_colours([image], [depth], [K], world_to_cam, grid, tolerance_px=tolerance)
    z = cell_centers(grid)[..., 2]
    near_plane = np.abs(z) < 0.012  # the camera's z-depth of a centre is 1 - z (up to the 0.001 tilt)
    assert (views[near_plane] == 1).all() and (views[~near_plane] == 0).all()
    np.testing.assert_allclose(colour[0][near_plane], 200.0)
    assert (colour[1:] == 0).all() and (colour[0][~near_plane] == 0).all()
