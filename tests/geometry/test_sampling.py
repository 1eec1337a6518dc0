"""Trilinear sampling of sparse voxels against grid_sample on the dense twin."""
import pytest
import torch
import torch.nn.functional as F

from oddsparse import SparseVoxels, VoxelGrid
from oddsparse.geometry.conventions import grid_sample_coords
from oddsparse.renderers import VoxelHash, sample_sparse_trilinear


def _random_sparse(generator, batch=2, channels=3, shape=(5, 4, 3), fraction=0.5, dtype=torch.float64):
    grid = VoxelGrid(shape=shape, voxel_size=0.1, origin=(-0.2, 0.3, 0.0))
    mask = torch.rand(batch, *shape, generator=generator) < fraction
    dense = torch.randn(batch, channels, *shape, generator=generator, dtype=dtype) * mask[:, None]
    return SparseVoxels.from_dense(dense, grid, mask=mask), grid


def _grid_sample(dense, grid, points_world, batch_index):
    """Batched grid_sample reference: (P, C)."""
    continuous = grid.world_to_continuous(points_world)
    coords = grid_sample_coords(continuous, grid.shape)  # (P, 3) (z, y, x)
    out = []
    for scene in range(dense.shape[0]):
        volume_coords = coords.reshape(1, -1, 1, 1, 3)
        sampled = F.grid_sample(dense[scene:scene + 1], volume_coords, mode="bilinear", padding_mode="zeros",
                                align_corners=False)  # (1, C, P, 1, 1)
        out.append(sampled.reshape(dense.shape[1], -1).T)
    stacked = torch.stack(out)  # (B, P, C)
    return stacked[batch_index, torch.arange(points_world.shape[0])]


def _random_points(generator, grid, count, margin=1.0):
    lo = torch.tensor(grid.origin, dtype=torch.float64) - margin * grid.voxel_size
    size = torch.tensor(grid.extent, dtype=torch.float64) + 2 * margin * grid.voxel_size
    return lo + torch.rand(count, 3, generator=generator, dtype=torch.float64) * size


def test_voxel_hash_lookup_matches_a_dict():
    generator = torch.Generator().manual_seed(0)
    sv, grid = _random_sparse(generator)
    permutation = torch.randperm(sv.num_voxels, generator=generator)
    sv = sv.replace(coords=sv.coords[permutation], feats=sv.feats[permutation])
    table = {tuple(row): i for i, row in enumerate(sv.coords.tolist())}
    queries = torch.randint(-1, 6, (400, 3), generator=generator)
    batch = torch.randint(0, 2, (400,), generator=generator)
    rows, found = VoxelHash(sv).lookup(batch, queries)
    for b, query, row, hit in zip(batch.tolist(), queries.tolist(), rows.tolist(), found.tolist()):
        expected = table.get((b, *query))
        assert hit == (expected is not None)
        assert row == (expected if hit else sv.num_voxels)


def test_forward_matches_grid_sample_including_outside_shell():
    generator = torch.Generator().manual_seed(1)
    sv, grid = _random_sparse(generator)
    points = _random_points(generator, grid, 2000)
    batch = torch.randint(0, 2, (2000,), generator=generator)
    ours = sample_sparse_trilinear(sv, points, batch)
    expected = _grid_sample(sv.dense(), grid, points, batch)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)
    # exact voxel centres return the voxel value; absent voxels read 0
    centres = sv.voxel_centers()
    torch.testing.assert_close(sample_sparse_trilinear(sv, centres, sv.batch_index), sv.feats)


def test_far_outside_and_empty_neighbourhood_read_zero():
    grid = VoxelGrid(shape=(6, 6, 6), voxel_size=0.5, origin=(0.0, 0.0, 0.0))
    dense = torch.zeros(1, 2, 6, 6, 6)
    dense[0, :, 1, 1, 1] = torch.tensor([3.0, -1.0])
    sv = SparseVoxels.from_dense(dense, grid)
    points = torch.tensor([[-5.0, 1.0, 1.0], [0.75, 0.75, 0.75], [2.5, 2.5, 2.5], [1.0, 0.75, 0.75]])
    out = sample_sparse_trilinear(sv, points)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0], [3.0, -1.0], [0.0, 0.0], [1.5, -0.5]]))
    empty = SparseVoxels(coords=torch.zeros(0, 4, dtype=torch.int32), feats=torch.zeros(0, 2), batch_size=1, grid=grid)
    assert torch.equal(sample_sparse_trilinear(empty, points), torch.zeros(4, 2))


def test_gradients_match_grid_sample_at_active_sites_and_points():
    generator = torch.Generator().manual_seed(2)
    sv, grid = _random_sparse(generator, channels=4)
    points = _random_points(generator, grid, 500, margin=0.4)
    batch = torch.randint(0, 2, (500,), generator=generator)
    upstream = torch.randn(500, 4, generator=generator, dtype=torch.float64)

    feats = sv.feats.clone().requires_grad_(True)
    points_ours = points.clone().requires_grad_(True)
    (sample_sparse_trilinear(sv.replace(feats=feats), points_ours, batch) * upstream).sum().backward()

    dense = sv.dense().requires_grad_(True)
    points_ref = points.clone().requires_grad_(True)
    (_grid_sample(dense, grid, points_ref, batch) * upstream).sum().backward()
    coords = sv.coords.long()
    expected_feats_grad = dense.grad[coords[:, 0], :, coords[:, 1], coords[:, 2], coords[:, 3]]
    torch.testing.assert_close(feats.grad, expected_feats_grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(points_ours.grad, points_ref.grad, rtol=1e-8, atol=1e-8)


def test_bad_shapes_raise():
    generator = torch.Generator().manual_seed(3)
    sv, _ = _random_sparse(generator)
    with pytest.raises(ValueError, match="points_world"):
        sample_sparse_trilinear(sv, torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="batch_index"):
        sample_sparse_trilinear(sv, torch.zeros(4, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.long))
