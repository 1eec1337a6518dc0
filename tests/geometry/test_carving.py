import itertools

import pytest
import torch
import torch.nn.functional as F

from cameras_fixture import GRID, IMAGE_SIZE, random_rig
from oddsparse.geometry import VoxelGrid, carve_occupancy
from reference_geometry import carve_reference


def _blobs(views: int, seed: int) -> torch.Tensor:
    """(V, H, W) smooth random foreground probabilities: large blobs, so that some voxels survive."""
    noise = torch.rand(views, 1, 6, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    smooth = F.interpolate(noise, size=IMAGE_SIZE, mode="bilinear", align_corners=False)[:, 0]
    return 0.35 + 0.65 * smooth  # mostly foreground, with holes


def _as_dict(occupancy, batch=0):
    rows = occupancy.coords[:, 0] == batch
    return {tuple(c): float(f) for c, f in zip(occupancy.coords[rows, 1:].tolist(), occupancy.feats[rows, 0])}


@pytest.mark.parametrize("subdivisions,tolerance,min_views,threshold", [
    (1, 0, 1, 0.5), (2, 0, 1, 0.5), (2, 1, 3, 0.8), (2, 0.3, 1, 0.55), (3, 0, 2, 0.5)])
def test_matches_reference(subdivisions, tolerance, min_views, threshold):
    K, world_to_cam = random_rig(4, seed=10)
    foreground = _blobs(4, seed=11)
    occupancy = carve_occupancy(foreground, K, world_to_cam, GRID, threshold=threshold, tolerance=tolerance,
                                min_views=min_views, subdivisions=subdivisions)
    expected = carve_reference(foreground.numpy(), K.tolist(), world_to_cam.tolist(), GRID, threshold=threshold,
                               tolerance=tolerance, min_views=min_views, subdivisions=subdivisions)
    got = _as_dict(occupancy)
    assert got.keys() == expected.keys()
    assert 0 < len(got) < GRID.num_voxels  # the case carves something and keeps something
    for key, fraction in expected.items():
        assert got[key] == pytest.approx(fraction, abs=1e-6)


def test_bool_masks_batched_and_dilation():
    K, world_to_cam = random_rig(4, seed=12)
    masks = _blobs(4, seed=13) > 0.6
    masks2 = _blobs(4, seed=14) > 0.5
    batched = carve_occupancy(torch.stack([masks, masks2]), torch.stack([K, K]), torch.stack([world_to_cam] * 2), GRID)
    single = carve_occupancy(masks2, K, world_to_cam, GRID)
    assert _as_dict(batched, 1) == _as_dict(single, 0)
    expected = carve_reference(masks.numpy().astype(float), K.tolist(), world_to_cam.tolist(), GRID)
    assert _as_dict(batched, 0).keys() == expected.keys()

    dilated = carve_occupancy(masks, K, world_to_cam, GRID, dilation=1)
    grown = set()
    for (x, y, z) in expected:
        for dx, dy, dz in itertools.product((-1, 0, 1), repeat=3):
            neighbour = (x + dx, y + dy, z + dz)
            if all(0 <= neighbour[a] < GRID.shape[a] for a in range(3)):
                grown.add(neighbour)
    got = _as_dict(dilated)
    assert got.keys() == grown and len(grown) > len(expected)
    assert all(got[key] == pytest.approx(expected[key], abs=1e-6) for key in expected)
    assert all(got[key] == 0 for key in grown - expected.keys())


def test_all_foreground_keeps_seen_voxels_only():
    K, world_to_cam = random_rig(4, seed=12)  # voxels seen by 1, 2 and 3 views (centres)
    occupancy = carve_occupancy(torch.ones(4, *IMAGE_SIZE, dtype=torch.bool), K, world_to_cam, GRID, min_views=3)
    expected = carve_reference(torch.ones(4, *IMAGE_SIZE).numpy(), K.tolist(), world_to_cam.tolist(), GRID, min_views=3)
    assert _as_dict(occupancy).keys() == expected.keys() and 0 < len(expected) < GRID.num_voxels


def test_carving_everything_away_returns_empty_occupancy():
    """An all-background view removes every voxel before the last view: empty result, no crash."""
    from oddsparse.geometry.cameras import default_intrinsics, orbit_cameras

    grid = VoxelGrid(shape=(8, 8, 4), voxel_size=0.1, origin=(-0.4, -0.4, 0.0))
    occupancy = carve_occupancy(torch.zeros(4, 32, 32), default_intrinsics(32).expand(4, 3, 3),
                                orbit_cameras(4, radius=2.0, elevation_deg=30.0).float(), grid, tolerance=1)
    assert occupancy.num_voxels == 0 and occupancy.coords.shape == (0, 4)


@pytest.mark.parametrize("block,tolerance,subdivisions", [(2, 0, 2), (3, 1, 1), (4, 0, 2), (8, 0.5, 1), (5, 2, 2)])
def test_block_culling_gives_exactly_the_voxelwise_result(block, tolerance, subdivisions):
    # a grid whose sides are not multiples of the block, small foreground blobs: most blocks are culled
    from oddsparse.geometry.carving import culled_blocks

    grid = VoxelGrid(shape=(23, 18, 10), voxel_size=0.025, origin=(-0.29, -0.22, 0.0))
    K, world_to_cam = random_rig(5, seed=20 + block)
    foreground = _blobs(5, seed=21 + block) > 0.85
    kwargs = dict(tolerance=tolerance, min_views=1, subdivisions=subdivisions)
    fast = carve_occupancy(foreground, K, world_to_cam, grid, block=block, **kwargs)
    slow = carve_occupancy(foreground, K, world_to_cam, grid, block=0, **kwargs)
    assert torch.equal(fast.coords, slow.coords) and torch.equal(fast.feats, slow.feats)
    assert 0 < slow.num_voxels < grid.num_voxels
    # culling is not a no-op here, and every voxel of a culled block is absent from the voxelwise result
    max_disagree = tolerance * 5 if isinstance(tolerance, float) else tolerance
    culled = culled_blocks(foreground, K, world_to_cam, grid, block, max_disagree)
    assert culled.any() and (tolerance != 0 or culled.float().mean() > 0.3)
    kept = set(map(tuple, slow.coords[:, 1:].tolist()))
    for bx, by, bz in torch.nonzero(culled).tolist():
        for x, y, z in itertools.product(range(bx * block, min(grid.shape[0], (bx + 1) * block)),
                                         range(by * block, min(grid.shape[1], (by + 1) * block)),
                                         range(bz * block, min(grid.shape[2], (bz + 1) * block))):
            assert (x, y, z) not in kept
