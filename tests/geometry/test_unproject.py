import numpy as np
import pytest
import torch

from cameras_fixture import GRID, IMAGE_SIZE, random_rig
from oddsparse.geometry import unproject_features
from oddsparse.geometry.unproject import sample_views
from oddsparse.structures import SparseVoxels
from reference_geometry import sample_views_reference, unproject_reference


@pytest.mark.parametrize("feature_size", [(30, 40), (8, 10)])
def test_dense_matches_reference(feature_size):
    K, world_to_cam = random_rig(5, seed=1)
    features = torch.rand(2, 5, 3, *feature_size, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    Kb, w2cb = torch.stack([K, K.flip(0)]), torch.stack([world_to_cam, world_to_cam.flip(0)])
    volume, count = unproject_features(features, Kb, w2cb, IMAGE_SIZE, GRID)
    assert volume.shape == (2, 3, *GRID.shape) and count.shape == (2, *GRID.shape)
    indices = GRID.all_indices().tolist()
    for b in range(2):
        expected, expected_count = unproject_reference(features[b].numpy(), Kb[b].tolist(), w2cb[b].tolist(),
                                                       IMAGE_SIZE, GRID, indices)
        got = volume[b].reshape(3, -1).T.numpy()
        np.testing.assert_array_equal(count[b].reshape(-1).numpy(), expected_count)
        np.testing.assert_allclose(got, expected, atol=1e-9)
    # the rig is meant to exercise every visibility case
    assert int((count[0] > 0).sum()) > 0


def test_visibility_cases_present():
    K, world_to_cam = random_rig(5, seed=1)
    _, count = unproject_features(torch.ones(5, 1, 30, 40, dtype=torch.float64), K, world_to_cam, IMAGE_SIZE, GRID)
    # view 0 looks away, so no voxel is seen by all 5 views; some are seen by several
    assert int(count.max()) <= 4 and int(count.max()) >= 2


def test_sparse_matches_reference_and_dense():
    K, world_to_cam = random_rig(4, seed=3)
    gen = torch.Generator().manual_seed(4)
    features = torch.rand(2, 4, 2, 15, 20, dtype=torch.float64, generator=gen)
    Kb, w2cb = torch.stack([K, K]), torch.stack([world_to_cam, world_to_cam.roll(1, 0)])
    dense, dense_count = unproject_features(features, Kb, w2cb, IMAGE_SIZE, GRID)
    all_coords = torch.cat([torch.cat([torch.full((GRID.num_voxels, 1), b), GRID.all_indices()], 1) for b in range(2)])
    coords = all_coords[torch.randperm(all_coords.shape[0], generator=gen)[:25]].to(torch.int32)
    sparse, count = unproject_features(features, Kb, w2cb, IMAGE_SIZE, GRID,
                                       coords=SparseVoxels(coords, torch.zeros(25, 1), 2, GRID))
    assert torch.equal(sparse.coords, coords) and sparse.feats.shape == (25, 2)
    b, x, y, z = coords.long().unbind(1)
    torch.testing.assert_close(sparse.feats, dense[b, :, x, y, z], rtol=0, atol=1e-12)
    assert torch.equal(count, dense_count[b, x, y, z])
    for row in range(25):
        expected, expected_count = unproject_reference(features[b[row]].numpy(), Kb[b[row]].tolist(),
                                                       w2cb[b[row]].tolist(), IMAGE_SIZE, GRID,
                                                       [coords[row, 1:].tolist()])
        np.testing.assert_allclose(sparse.feats[row].numpy(), expected[0], atol=1e-9)
        assert int(count[row]) == expected_count[0]


def test_unbatched_and_gradient():
    K, world_to_cam = random_rig(3, seed=5, looking_away=False)
    features = torch.rand(3, 2, 6, 8, dtype=torch.float64, requires_grad=True)
    volume, count = unproject_features(features, K, world_to_cam, IMAGE_SIZE, GRID)
    assert volume.shape == (1, 2, *GRID.shape)
    volume.sum().backward()
    # each visible (voxel, view) pair spreads 1/count over bilinear weights summing to 1
    assert torch.isclose(features.grad.sum(), (count > 0).sum().to(torch.float64) * 2)


def test_bad_coords_raise():
    K, world_to_cam = random_rig(2, seed=6)
    with pytest.raises(ValueError, match="batch column"):
        unproject_features(torch.rand(2, 1, 4, 4), K, world_to_cam, IMAGE_SIZE, GRID,
                           coords=torch.tensor([[1, 0, 0, 0]], dtype=torch.int32))


def test_sample_views_matches_reference_weighted_and_not():
    K, world_to_cam = random_rig(5, seed=6)
    gen = torch.Generator().manual_seed(7)
    features = torch.rand(5, 3, 15, 20, dtype=torch.float64, generator=gen)
    points = (torch.rand(40, 3, dtype=torch.float64, generator=gen) - 0.5) * 0.6
    weights = torch.rand(5, 40, dtype=torch.float64, generator=gen)
    weights[:, :5] = 0.0  # points no weight sees: zeros
    plain, count = sample_views(features, K, world_to_cam, IMAGE_SIZE, points)
    expected, expected_count = sample_views_reference(features.numpy(), K.tolist(), world_to_cam.tolist(), IMAGE_SIZE,
                                                      points.tolist())
    np.testing.assert_array_equal(count.numpy(), expected_count)
    np.testing.assert_allclose(plain.numpy(), expected, atol=1e-9)
    assert 0 < int(count.min()) < int(count.max())  # points seen by different numbers of views
    weighted, support = sample_views(features, K, world_to_cam, IMAGE_SIZE, points, weights, view_chunk=2)
    expected, expected_support = sample_views_reference(features.numpy(), K.tolist(), world_to_cam.tolist(),
                                                        IMAGE_SIZE, points.tolist(), weights.numpy())
    np.testing.assert_allclose(support.numpy(), expected_support, atol=1e-12)
    np.testing.assert_allclose(weighted.numpy(), expected, atol=1e-9)
    assert (weighted[:5] == 0).all() and not torch.allclose(weighted[5:], plain[5:])
    # the voxel centres of unproject_features are points like any other
    indices = GRID.all_indices()[::7]
    sparse, sparse_count = unproject_features(features, K, world_to_cam, IMAGE_SIZE, GRID,
                                              torch.cat([torch.zeros(len(indices), 1, dtype=torch.long), indices], 1))
    at_centres, centre_count = sample_views(features, K, world_to_cam, IMAGE_SIZE,
                                            GRID.voxel_centers(indices, dtype=torch.float64))
    torch.testing.assert_close(at_centres, sparse.feats)
    torch.testing.assert_close(centre_count, sparse_count)
    with pytest.raises(ValueError, match="weights must be"):
        sample_views(features, K, world_to_cam, IMAGE_SIZE, points, weights[:, :3])
