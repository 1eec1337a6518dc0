import numpy as np
import pytest
import torch

from oddsparse.geometry import VoxelGrid, YawBoxes, roi_sample
from oddsparse.structures import SparseVoxels
from reference_geometry import roi_reference

GRID = VoxelGrid(shape=(7, 6, 4), voxel_size=0.1, origin=(-0.35, -0.3, 0.0))


def _field(seed):
    """(2, 3, X, Y, Z) float64 with about half the voxels absent (zero)."""
    gen = torch.Generator().manual_seed(seed)
    dense = torch.randn(2, 3, *GRID.shape, generator=gen, dtype=torch.float64)
    present = torch.rand(2, 1, *GRID.shape, generator=gen) < 0.5
    return dense * present, present[:, 0]


def _boxes():
    # inside, partly outside the grid, and rotated; scenes 0, 1, 1, 0
    boxes = YawBoxes(torch.tensor([[0.0, 0.0, 0.2], [0.3, -0.25, 0.1], [-0.1, 0.1, 0.25], [0.05, 0.02, 0.15]],
                                  dtype=torch.float64),
                     torch.tensor([[0.4, 0.3, 0.2], [0.3, 0.3, 0.3], [0.25, 0.35, 0.15], [0.2, 0.2, 0.2]],
                                  dtype=torch.float64),
                     torch.tensor([0.3, -1.0, 2.5, 0.0], dtype=torch.float64))
    return boxes, torch.tensor([0, 1, 1, 0])


@pytest.mark.parametrize("margin", [0.0, 0.05])
def test_dense_and_sparse_match_reference(margin):
    dense, present = _field(0)
    boxes, batch_index = _boxes()
    out_dense = roi_sample(dense, boxes, batch_index, grid=GRID, out_size=5, margin=margin)
    sparse = SparseVoxels.from_dense(dense, GRID, mask=present)
    out_sparse = roi_sample(sparse, boxes, batch_index, out_size=5, margin=margin)
    out_sparse_dense = roi_sample(sparse, boxes, batch_index, out_size=5, margin=margin, method="dense")
    assert out_dense.shape == (4, 3, 5, 5, 5)
    for o in range(4):
        expected = roi_reference(dense[batch_index[o]].numpy(), GRID, boxes.center[o].tolist(),
                                 boxes.size[o].tolist(), float(boxes.yaw[o]), out_size=5, margin=margin)
        np.testing.assert_allclose(out_dense[o].numpy(), expected, atol=1e-10)
        np.testing.assert_allclose(out_sparse[o].numpy(), expected, atol=1e-10)
    torch.testing.assert_close(out_sparse_dense, out_dense)
    assert float(out_dense.abs().min()) == 0 and float(out_dense.abs().max()) > 0.5


def test_sparse_gradient_matches_dense():
    dense, present = _field(1)
    boxes, batch_index = _boxes()
    feats = SparseVoxels.from_dense(dense, GRID, mask=present).feats.clone().requires_grad_(True)
    sparse = SparseVoxels.from_dense(dense, GRID, mask=present).replace(feats=feats)
    weights = torch.randn(4, 3, 8, 8, 8, dtype=torch.float64)
    (roi_sample(sparse, boxes, batch_index) * weights).sum().backward()
    feats_dense = feats.detach().clone().requires_grad_(True)
    (roi_sample(sparse.replace(feats=feats_dense), boxes, batch_index, method="dense") * weights).sum().backward()
    torch.testing.assert_close(feats.grad, feats_dense.grad)
    assert float(feats.grad.abs().max()) > 0


def test_axis_order_follows_box_axes():
    # a field that increases along world x only; a box turned by +90 degrees has its x axis along world y
    index = GRID.all_indices()
    dense = GRID.voxel_centers(index, dtype=torch.float64)[:, 0].reshape(1, 1, *GRID.shape)
    straight = YawBoxes(torch.tensor([[0.0, 0.0, 0.2]], dtype=torch.float64), torch.full((1, 3), 0.2,
                        dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    turned = straight._replace(yaw=torch.tensor([torch.pi / 2], dtype=torch.float64))
    a = roi_sample(dense, straight, grid=GRID, out_size=4)[0, 0]
    b = roi_sample(dense, turned, grid=GRID, out_size=4)[0, 0]
    assert bool((a[1:] > a[:-1]).all())  # increases along i (box x = world x)
    torch.testing.assert_close(a[:, 0, 0], torch.tensor([-0.075, -0.025, 0.025, 0.075], dtype=torch.float64))
    assert bool((b[:, 1:] < b[:, :-1]).all())  # box y = world -x after the turn


def test_empty_and_bad_input():
    dense, present = _field(2)
    empty = roi_sample(dense, (torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0)), grid=GRID)
    assert empty.shape == (0, 3, 8, 8, 8)
    with pytest.raises(ValueError, match="needs grid"):
        roi_sample(dense, _boxes()[0])
    with pytest.raises(ValueError, match="batch_index"):
        roi_sample(dense, _boxes()[0], torch.tensor([0, 1]), grid=GRID)
