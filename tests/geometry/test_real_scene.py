"""Geometry checked on the real published scene (../shared/data/toysad_sample/banana_028-sample)."""
import pytest
import torch

from oddsparse.geometry import (VoxelGrid, YawBoxes, box_iou_3d, boxes_from_occupancy, carve_occupancy,
                                project_points, rotation_to_yaw, unproject_depth)
from oddsparse.geometry.conventions import pixel_centers
from sample_scene import load_sample_scene


@pytest.fixture(scope="module")
def scene():
    return load_sample_scene()


def test_object_locations_project_onto_their_masks(scene):
    objects, views, height, width = scene.masks.shape
    uv, depth = project_points(scene.center[:, None, None, :].expand(objects, views, 1, 3), scene.K, scene.world_to_cam)
    uv = uv[:, :, 0]  # (O, V, 2)
    assert bool((depth > 0).all())
    centres = pixel_centers(height, width, dtype=torch.float64)
    errors = torch.empty(objects, views, dtype=torch.float64)
    for o in range(objects):
        for v in range(views):
            mask = scene.masks[o, v]
            assert mask.any(), f"object {o} has an empty mask in view {v}"
            col, row = int(uv[o, v, 0].floor()), int(uv[o, v, 1].floor())
            if 0 <= row < height and 0 <= col < width and mask[row, col]:
                errors[o, v] = 0.0  # lands inside the mask
            else:
                errors[o, v] = (centres[mask] - uv[o, v]).norm(dim=-1).min()
    assert float(errors.median()) < 10.0
    assert float(errors.max()) < 20.0, f"worst projection error {float(errors.max()):.1f} px"


def test_back_projected_depth_lands_on_the_same_object(scene):
    objects, views, height, width = scene.masks.shape
    points, valid = unproject_depth(scene.depth, scene.K, scene.world_to_cam)  # (V, H, W, 3)
    checked = landed = 0
    for a in (0, 7, 13):
        for o in range(objects):
            source = scene.masks[o, a] & valid[a]
            points_world = points[a][source]  # (P, 3)
            uv, z = project_points(points_world, scene.K, scene.world_to_cam)  # (V, P, 2), (V, P)
            for b in range(views):
                if b == a:
                    continue
                col, row = uv[b, :, 0].floor().long(), uv[b, :, 1].floor().long()
                inside = (z[b] > 0) & (col >= 0) & (col < width) & (row >= 0) & (row < height)
                col, row = col[inside], row[inside]
                # visible in b: the point is the surface view b sees at that pixel (not occluded)
                visible = (scene.depth[b, row, col] - z[b, inside]).abs() < 0.005
                checked += int(visible.sum())
                landed += int(scene.masks[o, b, row[visible], col[visible]].sum())
    assert checked > 20000
    assert landed / checked > 0.99, f"{landed}/{checked} reprojected points land on the object's mask"


def test_carving_gt_masks_gives_three_boxes_matching_ground_truth(scene):
    foreground = scene.masks.any(dim=0)  # (V, H, W) union of the objects' masks
    occupancy = carve_occupancy(foreground, scene.K.float(), scene.world_to_cam.float(), VoxelGrid())
    boxes = boxes_from_occupancy(occupancy)
    assert len(boxes) == 1 and boxes[0].center.shape[0] == 3
    truth = YawBoxes(scene.center, scene.size, rotation_to_yaw(scene.rotation))
    iou = box_iou_3d(boxes[0], truth)  # (3, 3)
    best = iou.argmax(dim=1)
    assert sorted(best.tolist()) == [0, 1, 2], f"boxes do not match objects one to one: IoU\n{iou}"
    assert float(iou.max(dim=1).values.min()) > 0.5, f"IoU\n{iou}"
