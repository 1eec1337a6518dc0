import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from oddsparse.geometry import (VoxelGrid, YawBoxes, box_intersection_3d, box_iou_3d, boxes_from_occupancy,
                                min_area_rectangle, nms_boxes, rotation_to_yaw, yaw_boxes_to_corners, yaw_to_rotation)
from oddsparse.structures import SparseVoxels
from reference_geometry import iou_reference


def _random_boxes(count, seed, spread=0.3):
    gen = torch.Generator().manual_seed(seed)
    center = (torch.rand(count, 3, generator=gen, dtype=torch.float64) - 0.5) * spread
    size = 0.1 + 0.4 * torch.rand(count, 3, generator=gen, dtype=torch.float64)
    yaw = (torch.rand(count, generator=gen, dtype=torch.float64) - 0.5) * 2 * math.pi
    return YawBoxes(center, size, yaw)


def test_iou_matches_rasterised_reference():
    boxes_a, boxes_b = _random_boxes(6, seed=0), _random_boxes(4, seed=1)
    far = YawBoxes(torch.tensor([[2.0, 0.0, 0.0]], dtype=torch.float64), boxes_b.size[:1], boxes_b.yaw[:1])
    boxes_b = YawBoxes(*(torch.cat([x, y]) for x, y in zip(boxes_b, far)))
    iou = box_iou_3d(boxes_a, boxes_b)
    assert iou.shape == (6, 5)
    expected = torch.tensor([[iou_reference(tuple(map(lambda t: t[i].tolist(), boxes_a)),
                                            tuple(map(lambda t: t[j].tolist(), boxes_b))) for j in range(5)]
                             for i in range(6)], dtype=torch.float64)
    assert (expected > 0.05).sum() >= 10 and (expected == 0).sum() >= 1  # partial overlaps and a disjoint pair
    torch.testing.assert_close(iou, expected, atol=4e-3, rtol=0)


def test_iou_special_cases():
    boxes = _random_boxes(4, seed=2)
    torch.testing.assert_close(torch.diagonal(box_iou_3d(boxes, boxes)), torch.ones(4, dtype=torch.float64))
    # the same box described with yaw + 90 degrees and swapped x/y sizes
    turned = YawBoxes(boxes.center, boxes.size[:, [1, 0, 2]], boxes.yaw + math.pi / 2)
    torch.testing.assert_close(torch.diagonal(box_iou_3d(boxes, turned)), torch.ones(4, dtype=torch.float64))
    # axis-aligned, hand computed: unit cubes offset by 0.5 in x -> 0.5 / 1.5
    a = (torch.zeros(1, 3), torch.ones(1, 3), torch.zeros(1))
    b = (torch.tensor([[0.5, 0.0, 0.0]]), torch.ones(1, 3), torch.zeros(1))
    assert float(box_iou_3d(a, b)) == pytest.approx(1 / 3)
    # 45 degree turn of a unit square over a unit square: overlap area 2 (sqrt 2 - 1) = 0.828...
    c = (torch.zeros(1, 3), torch.ones(1, 3), torch.tensor([math.pi / 4]))
    overlap = 2 * (math.sqrt(2) - 1)
    assert float(box_iou_3d(a, c)) == pytest.approx(overlap / (2 - overlap))
    # an object with center/size/rotation is accepted
    obj = SimpleNamespace(center=boxes.center, size=boxes.size, rotation=yaw_to_rotation(boxes.yaw))
    torch.testing.assert_close(box_iou_3d(obj, boxes), box_iou_3d(boxes, boxes))


def test_yaw_rotation_round_trip_and_corners():
    yaw = torch.linspace(-3.1, 3.1, 9, dtype=torch.float64)
    torch.testing.assert_close(rotation_to_yaw(yaw_to_rotation(yaw)), yaw)
    with pytest.raises(ValueError, match="not a rotation about world z"):
        rotation_to_yaw(torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]))
    boxes = _random_boxes(3, seed=3)
    corners = yaw_boxes_to_corners(*boxes)  # (O, 8, 3)
    for o in range(3):
        c, s = math.cos(boxes.yaw[o]), math.sin(boxes.yaw[o])
        for corner in range(8):
            signs = [((corner >> 2) & 1) * 2 - 1, ((corner >> 1) & 1) * 2 - 1, (corner & 1) * 2 - 1]
            dx, dy, dz = (signs[a] * float(boxes.size[o, a]) / 2 for a in range(3))
            expected = [float(boxes.center[o, 0]) + c * dx - s * dy, float(boxes.center[o, 1]) + s * dx + c * dy,
                        float(boxes.center[o, 2]) + dz]
            np.testing.assert_allclose(corners[o, corner].numpy(), expected, atol=1e-12)


def test_min_area_rectangle_of_collinear_points_lies_along_them():
    """Points on one line: the rectangle of area 0 along the line (by hand: length 2 sqrt 2 at 45 degrees)."""
    center, size, yaw = min_area_rectangle(np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]))
    assert np.allclose(center, [1.0, 1.0]) and np.allclose(size, [2 * math.sqrt(2), 0.0]) and math.isclose(yaw, math.pi / 4)
    center, size, yaw = min_area_rectangle(np.array([[0.5, -1.0]] * 3))  # one point
    assert np.allclose(center, [0.5, -1.0]) and np.allclose(size, 0.0)


def test_min_area_rectangle_recovers_rotated_rectangle():
    gen = np.random.default_rng(4)
    yaw, size, center = 0.7, np.array([0.5, 0.2]), np.array([0.3, -0.1])
    rotation = np.array([[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])
    local = np.concatenate([np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * size / 2,
                            (gen.random((50, 2)) - 0.5) * size])
    got_center, got_size, got_yaw = min_area_rectangle(local @ rotation.T + center)
    np.testing.assert_allclose(got_center, center, atol=1e-9)
    np.testing.assert_allclose(got_size, size, atol=1e-9)
    assert got_yaw == pytest.approx(yaw)


def test_min_area_rectangle_of_random_clouds_against_a_sweep_of_angles():
    """On random clouds: yaw in [-pi/2, pi/2), size[0] >= size[1], every point inside, and an area no larger than
    the smallest of a fine sweep of rectangle angles (a brute-force minimum sharing no code)."""
    gen = np.random.default_rng(8)
    sweep = np.linspace(0.0, math.pi / 2, 2001)
    for _ in range(60):
        points = gen.normal(size=(gen.integers(3, 40), 2)) * gen.uniform(0.1, 2.0, size=2) + gen.normal(size=2)
        center, size, yaw = min_area_rectangle(points)
        assert -math.pi / 2 <= yaw < math.pi / 2 and size[0] >= size[1]
        c, s = math.cos(yaw), math.sin(yaw)
        local = (points - center) @ np.array([[c, -s], [s, c]])  # coordinates along the box's axes
        assert (np.abs(local) <= size / 2 + 1e-9).all()
        turned = [points @ np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) for a in sweep]
        brute = min(float(np.prod(t.max(0) - t.min(0))) for t in turned)
        assert float(np.prod(size)) <= brute + 1e-9


def _voxelise(boxes: YawBoxes, grid: VoxelGrid) -> SparseVoxels:
    """Voxels whose centre lies inside any of the boxes (hand test in the box frame)."""
    index = grid.all_indices()
    centre = grid.voxel_centers(index, dtype=torch.float64)
    inside = torch.zeros(index.shape[0], dtype=torch.bool)
    for o in range(boxes.center.shape[0]):
        local = (centre - boxes.center[o]) @ yaw_to_rotation(boxes.yaw[o])  # world -> box frame (row vectors)
        inside |= (local.abs() <= boxes.size[o] / 2).all(dim=-1)
    coords = torch.cat([torch.zeros(int(inside.sum()), 1, dtype=torch.long), index[inside]], 1).to(torch.int32)
    return SparseVoxels(coords, torch.ones(coords.shape[0], 1), 1, grid)


def test_boxes_from_occupancy_recovers_voxelised_boxes():
    grid = VoxelGrid(shape=(40, 40, 8), voxel_size=0.04, origin=(-0.8, -0.8, 0.0))
    truth = YawBoxes(torch.tensor([[-0.4, -0.3, 0.1], [0.3, 0.35, 0.08]], dtype=torch.float64),
                     torch.tensor([[0.5, 0.25, 0.2], [0.35, 0.3, 0.16]], dtype=torch.float64),
                     torch.tensor([0.5, -1.1], dtype=torch.float64))
    occupancy = _voxelise(truth, grid)
    noise = SparseVoxels(torch.tensor([[0, 39, 0, 0]], dtype=torch.int32), torch.ones(1, 1), 1, grid)
    found = boxes_from_occupancy(_merge(occupancy, noise), min_voxels=4)
    assert len(found) == 1 and found[0].center.shape == (2, 3)  # the lone voxel is dropped
    iou = box_iou_3d(found[0], truth)
    assert float(iou.max(dim=1).values.min()) > 0.75
    assert torch.equal(iou.argmax(dim=1), torch.tensor([0, 1]))  # sorted by voxel count


def _merge(a: SparseVoxels, b: SparseVoxels) -> SparseVoxels:
    return SparseVoxels(torch.cat([a.coords, b.coords]), torch.cat([a.feats, b.feats]), 1, a.grid)


def test_boxes_from_occupancy_batched_and_empty():
    grid = VoxelGrid(shape=(10, 10, 4), voxel_size=0.1, origin=(-0.5, -0.5, 0.0))
    coords = torch.tensor([[1, 2, 2, 0], [1, 3, 2, 0], [1, 2, 3, 0], [1, 3, 3, 0], [1, 2, 2, 1]], dtype=torch.int32)
    found = boxes_from_occupancy(SparseVoxels(coords, torch.ones(5, 1), 3, grid), min_voxels=2)
    assert [b.center.shape[0] for b in found] == [0, 1, 0]
    # 2 x 2 x 2 voxel block spans x, y in [-0.3, -0.1], z in [0, 0.2]
    torch.testing.assert_close(found[1].center, torch.tensor([[-0.2, -0.2, 0.1]]))
    torch.testing.assert_close(found[1].size, torch.tensor([[0.2, 0.2, 0.2]]))


def _block(x0, x1, y0, y1, z0, z1):
    """int32 (P, 4) batch-0 coords of the voxel block [x0, x1) x [y0, y1) x [z0, z1)."""
    grid = torch.stack(torch.meshgrid(torch.arange(x0, x1), torch.arange(y0, y1), torch.arange(z0, z1),
                                      indexing="ij"), dim=-1).reshape(-1, 3)
    return torch.cat([torch.zeros(len(grid), 1, dtype=torch.int64), grid], dim=1).to(torch.int32)


def test_floating_clusters_join_the_grounded_cluster_below_them():
    """A lamp-like object (base on the floor, a shade 3 voxels above it, the stem missing), a second
    grounded object, and a floating piece far from both: merging gives the lamp one box spanning base
    and shade, hand-computed, and leaves the rest alone; without merging the lamp gives two boxes."""
    grid = VoxelGrid(shape=(40, 20, 12), voxel_size=0.1, origin=(0.0, 0.0, 0.0))
    base, shade = _block(2, 6, 2, 6, 0, 2), _block(4, 8, 3, 7, 5, 7)  # shade: 3 empty layers above, xy overlap
    other, far_piece = _block(20, 24, 2, 6, 0, 3), _block(32, 35, 14, 17, 6, 8)  # far piece: > 2 voxels from all
    coords = torch.cat([base, shade, other, far_piece])
    occupancy = SparseVoxels(coords, torch.ones(len(coords), 1), 1, grid)
    plain = boxes_from_occupancy(occupancy, min_voxels=4)[0]
    merged = boxes_from_occupancy(occupancy, min_voxels=4, merge_floating=1.0)[0]
    assert plain.center.shape[0] == 4 and merged.center.shape[0] == 3
    # the lamp: voxels x in [2, 8), y in [2, 7), z in [0, 7) -> an axis-aligned 0.6 x 0.5 x 0.7 m box
    # (the footprint is the L-shaped union of two squares; its min-area rectangle is the bounding one)
    lamp = int(torch.argmin((merged.center[:, 0] - 0.5).abs()))
    torch.testing.assert_close(merged.center[lamp], torch.tensor([0.5, 0.45, 0.35]))
    torch.testing.assert_close(merged.size[lamp], torch.tensor([0.6, 0.5, 0.7]))
    # the other two boxes are the plain ones
    rest = sorted(range(3), key=lambda i: float(merged.center[i, 0]))[1:]
    plain_rest = sorted(range(4), key=lambda i: float(plain.center[i, 0]))[2:]
    torch.testing.assert_close(merged.center[rest], plain.center[plain_rest])
    torch.testing.assert_close(merged.size[rest], plain.size[plain_rest])
    # a lift above the shade's (5 voxels) keeps it on its own: nothing floats higher than that
    assert boxes_from_occupancy(occupancy, min_voxels=4, merge_floating=6.0)[0].center.shape[0] == 4


def test_merge_floating_clusters_labels_by_hand():
    from oddsparse.geometry.boxes import merge_floating_clusters

    index = np.array([[0, 0, 0], [1, 0, 0], [1, 0, 4], [2, 0, 4], [9, 0, 0], [9, 0, 5], [5, 0, 3]], dtype=np.float64)
    labels = np.array([0, 0, 1, 1, 2, 3, -1])
    # cluster 1 floats (z 4 > 0 + 2) 0 voxels from cluster 0's footprint (x 1) -> 0; cluster 3 floats above
    # cluster 2 (gap 0) -> 2; noise stays noise.
    out = merge_floating_clusters(index, labels, lift=2.0, reach=2.0)
    assert out.tolist() == [0, 0, 0, 0, 2, 2, -1]
    # moved 3 voxels right, cluster 1 is beyond reach 2 of every grounded cluster and stays; reach 3 takes it
    moved = index.copy()
    moved[2:4, 0] += 3  # x 4, 5: 3 voxels from cluster 0 (x 1), 4 from cluster 2 (x 9)
    assert merge_floating_clusters(moved, labels, lift=2.0, reach=2.0).tolist() == [0, 0, 1, 1, 2, 2, -1]
    assert merge_floating_clusters(moved, labels, lift=2.0, reach=3.0).tolist() == [0, 0, 0, 0, 2, 2, -1]
    assert labels.tolist() == [0, 0, 1, 1, 2, 3, -1]  # the input is not modified


def test_intersection_by_hand_and_against_the_iou_reference():
    """Axis-aligned boxes by hand; rotated ones through the rasterised IoU reference (I = IoU (Va + Vb) / (1 + IoU))."""
    a = YawBoxes(torch.tensor([[0.0, 0.0, 0.5]]), torch.tensor([[2.0, 2.0, 1.0]]), torch.tensor([0.0]))
    b = YawBoxes(torch.tensor([[1.0, 0.5, 1.0], [5.0, 0.0, 0.5]]), torch.tensor([[2.0, 1.0, 1.0], [1.0, 1.0, 1.0]]),
                 torch.tensor([0.0, 0.3]))
    # overlap x [0, 1], y [0, 1], z [0.5, 1]: 0.5; the far box none
    torch.testing.assert_close(box_intersection_3d(a, b), torch.tensor([[0.5, 0.0]], dtype=torch.float64))
    boxes_a, boxes_b = _random_boxes(5, seed=2), _random_boxes(3, seed=3)
    expected = torch.tensor([[iou_reference(tuple(t[i].tolist() for t in boxes_a), tuple(t[j].tolist() for t in boxes_b))
                              for j in range(3)] for i in range(5)], dtype=torch.float64)
    volume = (boxes_a.size.prod(1)[:, None] + boxes_b.size.prod(1)[None])
    torch.testing.assert_close(box_intersection_3d(boxes_a, boxes_b), expected * volume / (1 + expected),
                               atol=2e-3 * float(volume.max()), rtol=0)


def test_nms_keeps_the_best_of_overlapping_boxes_scene_by_scene():
    """Greedy NMS by a naive reading: in scene 0 boxes 0 and 1 overlap (IoU 0.6 by hand), 2 stands apart; the same
    two boxes in scene 1 do not suppress across scenes; equal scores keep the earlier box."""
    center = torch.tensor([[0.0, 0.0, 0.5], [0.25, 0.0, 0.5], [3.0, 0.0, 0.5], [0.0, 0.0, 0.5], [0.25, 0.0, 0.5]])
    size = torch.ones(5, 3)
    boxes = YawBoxes(center, size, torch.zeros(5))
    assert float(box_iou_3d(boxes, boxes)[0, 1]) == pytest.approx(0.75 / 1.25)
    scene = torch.tensor([0, 0, 0, 1, 1])
    keep = nms_boxes(boxes, torch.tensor([0.4, 0.9, 0.1, 0.8, 0.3]), scene, 0.5)
    assert keep.tolist() == [False, True, True, True, False]
    assert nms_boxes(boxes, torch.tensor([0.4, 0.9, 0.1, 0.8, 0.3]), scene, 0.7).all()  # 0.6 <= 0.7: both kept
    assert nms_boxes(boxes, torch.full((5,), 0.5), scene, 0.5).tolist() == [True, False, True, True, False]
    assert nms_boxes(YawBoxes(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0)), torch.zeros(0),
                     torch.zeros(0, dtype=torch.long), 0.5).shape == (0,)
