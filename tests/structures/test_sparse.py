"""SparseVoxels: validation, dense round trips, spconv bridge."""
import pytest
import torch

from oddsparse import SparseVoxels, VoxelGrid


def _random_dense(generator, batch=2, channels=3, shape=(5, 6, 4), fraction=0.2):
    mask = torch.rand(batch, *shape, generator=generator) < fraction
    dense = torch.randn(batch, channels, *shape, generator=generator) * mask[:, None]
    return dense, mask


def test_from_dense_dense_round_trip_and_layout():
    generator = torch.Generator().manual_seed(0)
    grid = VoxelGrid(shape=(5, 6, 4), voxel_size=0.1, origin=(0.0, 0.0, 0.0))
    dense, mask = _random_dense(generator)
    sv = SparseVoxels.from_dense(dense, grid, mask=mask)
    assert sv.coords.dtype == torch.int32 and sv.num_voxels == int(mask.sum())
    assert torch.equal(sv.dense(), dense)
    # layout check by a naive loop: feats row equals dense[b, :, x, y, z]
    for row in range(sv.num_voxels):
        b, x, y, z = sv.coords[row].tolist()
        assert torch.equal(sv.feats[row], dense[b, :, x, y, z])
    # voxel centres: origin + (index + 0.5) * size
    assert torch.allclose(sv.voxel_centers()[0], (sv.coords[0, 1:].float() + 0.5) * 0.1)


def test_dense_is_differentiable_and_sorted_preserves_content():
    generator = torch.Generator().manual_seed(1)
    dense, mask = _random_dense(generator)
    sv = SparseVoxels.from_dense(dense, VoxelGrid(shape=(5, 6, 4)), mask=mask)
    permutation = torch.randperm(sv.num_voxels, generator=generator)
    shuffled = sv.replace(coords=sv.coords[permutation], feats=sv.feats[permutation].clone().requires_grad_(True))
    shuffled.dense().sum().backward()
    assert torch.equal(shuffled.feats.grad, torch.ones_like(shuffled.feats))
    assert torch.equal(shuffled.sorted().coords, sv.coords)
    assert torch.equal(shuffled.dense(), dense)


def test_validation_messages():
    grid = VoxelGrid(shape=(2, 2, 2))
    with pytest.raises(ValueError, match=r"\(N, 4\) int32"):
        SparseVoxels(torch.zeros(3, 3, dtype=torch.int32), torch.zeros(3, 1), 1, grid)
    with pytest.raises(ValueError, match="int32"):
        SparseVoxels(torch.zeros(3, 4, dtype=torch.int64), torch.zeros(3, 1), 1, grid)
    with pytest.raises(ValueError, match="N = 3"):
        SparseVoxels(torch.zeros(3, 4, dtype=torch.int32), torch.zeros(2, 1), 1, grid)
    with pytest.raises(ValueError, match="grid.shape"):
        SparseVoxels.from_dense(torch.zeros(1, 1, 3, 3, 3), grid)


def test_cat_offsets_batches():
    generator = torch.Generator().manual_seed(2)
    grid = VoxelGrid(shape=(5, 6, 4))
    dense_a, mask_a = _random_dense(generator, batch=1)
    dense_b, mask_b = _random_dense(generator, batch=2)
    joined = SparseVoxels.cat([SparseVoxels.from_dense(dense_a, grid, mask_a), SparseVoxels.from_dense(dense_b, grid, mask_b)])
    assert joined.batch_size == 3
    assert torch.equal(joined.dense(), torch.cat([dense_a, dense_b]))


def test_spconv_round_trip():
    pytest.importorskip("spconv.pytorch", reason="spconv is not installed")
    generator = torch.Generator().manual_seed(3)
    grid = VoxelGrid(shape=(5, 6, 4))
    dense, mask = _random_dense(generator)
    sv = SparseVoxels.from_dense(dense, grid, mask=mask)
    assert sv.coords.is_contiguous()  # spconv reads raw memory: a column-major view corrupts its rulebook
    tensor = sv.to_spconv()
    assert torch.equal(tensor.dense(), dense)  # spconv's dense layout is (B, C, X, Y, Z) too
    back = SparseVoxels.from_spconv(tensor, grid)
    assert torch.equal(back.coords, sv.coords) and torch.equal(back.feats, sv.feats)


def test_grid_index_maps_round_trip():
    grid = VoxelGrid()
    index = torch.tensor([[0, 0, 0], [95, 95, 15], [10, 50, 3]])
    assert torch.equal(grid.world_to_index(grid.voxel_centers(index)), index)
    assert grid.contains_index(index).all()
    assert not grid.contains_index(torch.tensor([[96, 0, 0], [0, -1, 0]])).any()
    all_index = grid.all_indices()
    assert torch.equal(grid.linear_index(all_index), torch.arange(grid.num_voxels))
    assert grid.bounds()[0, 2] == 0.0 and abs(grid.bounds()[1, 0].item() - 1.92) < 1e-6


@pytest.mark.parametrize("row, message", [([0, 0, 0, 2], "iz must be in \\[0, 2\\), got 0..2"),
                                          ([0, -1, 0, 0], "ix must be in \\[0, 4\\)"),
                                          ([2, 0, 0, 0], "batch must be in \\[0, 2\\)")])
def test_out_of_range_rows_are_refused_where_they_would_wrap(row, message):
    """A row outside the batch or the grid would land on another voxel in dense() (index 2 of a 2-deep axis is
    the next row's 0) and share its linear key: both refuse it."""
    grid = VoxelGrid(shape=(4, 4, 2))
    coords = torch.tensor([[0, 0, 1, 0], row], dtype=torch.int32)
    sv = SparseVoxels(coords, torch.ones(2, 1), 2, grid)  # construction does not read the coordinates
    for method in (sv.dense, sv.linear_keys, sv.check_bounds):
        with pytest.raises(ValueError, match=message):
            method()
    inside = SparseVoxels(coords[:1], torch.ones(1, 1), 2, grid)
    assert inside.check_bounds() is inside and inside.dense().sum() == 1
