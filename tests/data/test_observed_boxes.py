"""observed_boxes: GT boxes fitted to what a scene's stored views show, against a naive back-projection,
a brute-force minimum-area search, and the measured properties of the real sample's published boxes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from oddsparse.data import SceneDataset, observed_boxes, read_scene
from oddsparse.data import dataset as dataset_module
from oddsparse.data.scene_io import object_points, read_scene_metadata
from oddsparse.geometry import VoxelGrid, boxes_from_occupancy, carve_occupancy
from oddsparse.geometry.boxes import as_yaw_boxes, box_iou_3d
from reference_data import require_sample
from reference_eval import tiny_dataset


def object_points_reference(folder) -> list[np.ndarray]:
    """(P, 3) world points of each object: every stored view's mask pixels with finite depth, back-projected
    one pixel centre (index + 0.5) at a time by the pinhole formula (no library camera code)."""
    scene = read_scene(folder)
    points = [[] for _ in range(scene.num_objects)]
    for v in range(scene.num_views):
        K = scene.K[v].double().numpy()
        M = scene.world_to_cam[v].double().numpy()
        depth = scene.depth[v].double().numpy()
        for i in range(scene.num_objects):
            rows, cols = np.nonzero(scene.masks[i, v].numpy() & np.isfinite(depth))
            z = depth[rows, cols]
            x_cam = (cols + 0.5 - K[0, 2]) / K[0, 0] * z
            y_cam = (rows + 0.5 - K[1, 2]) / K[1, 1] * z
            cam = np.stack([x_cam, y_cam, z], axis=1)
            points[i].append((cam - M[:3, 3]) @ M[:3, :3])  # R^T (x - t), row-wise
    return [np.concatenate(chunks) for chunks in points]


def in_box_frame(points: np.ndarray, boxes, i: int) -> np.ndarray:
    """Points in the axes of box ``i`` (``boxes``: YawBoxes), relative to its centre."""
    yaw = float(boxes.yaw[i])
    rotation = np.array([[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])
    local_xy = (points[:, :2] - boxes.center[i, :2].double().numpy()) @ rotation
    return np.concatenate([local_xy, points[:, 2:] - float(boxes.center[i, 2])], axis=1)


def brute_force_min_area(points_xy: np.ndarray, steps: int = 1800) -> float:
    """The smallest enclosing-rectangle area over ``steps`` yaws in [0, pi/2) (an upper bound of the minimum)."""
    best = math.inf
    for angle in np.arange(steps) * (math.pi / 2 / steps):
        c, s = math.cos(angle), math.sin(angle)
        local = points_xy @ np.array([[c, -s], [s, c]])
        best = min(best, float(np.prod(local.max(0) - local.min(0))))
    return best


def check_fit(folder, boxes) -> None:
    """Every object's observed box holds its back-projected points, touches them on every side, and has
    the minimum footprint area."""
    yaw_boxes = as_yaw_boxes(boxes)
    for i, cloud in enumerate(object_points_reference(folder)):
        if len(cloud) == 0:
            continue
        local = in_box_frame(cloud, yaw_boxes, i)
        half = yaw_boxes.size[i].double().numpy() / 2
        assert (np.abs(local) <= half + 1e-4).all(), (i, np.abs(local).max(0), half)
        np.testing.assert_allclose(local.max(0), half, atol=1e-4)  # tight: a point on every face
        np.testing.assert_allclose(local.min(0), -half, atol=1e-4)
        area = float(yaw_boxes.size[i, 0] * yaw_boxes.size[i, 1])
        reference = brute_force_min_area(cloud[:, :2])
        assert reference * 0.995 <= area <= reference * (1 + 1e-5) + 1e-9, (i, area, reference)


def test_observed_boxes_fit_what_the_generated_views_show(tmp_path_factory):
    root = tiny_dataset(tmp_path_factory.getbasetemp())
    folder = sorted(p.parent for p in root.rglob("scene3d.metadata.json"))[0]
    boxes = observed_boxes(folder)
    assert len(boxes.center) == len(read_scene_metadata(folder).object_names)
    for points, reference in zip(object_points(folder), object_points_reference(folder)):
        assert len(reference) > 0
        np.testing.assert_allclose(points.numpy(), reference, atol=1e-6)  # same pixels, same order
    check_fit(folder, boxes)


def test_read_scene_and_dataset_take_the_box_source(tmp_path_factory, monkeypatch):
    root = tiny_dataset(tmp_path_factory.getbasetemp())
    folder = sorted(p.parent for p in root.rglob("scene3d.metadata.json"))[0]
    published = read_scene_metadata(folder).boxes
    fitted = observed_boxes(folder)
    scene = read_scene(folder, views=[0, 2], image_size=32, box_source="observed")
    assert torch.equal(scene.boxes.center, fitted.center) and torch.equal(scene.boxes.size, fitted.size)
    assert torch.equal(read_scene(folder, views=[0]).boxes.center, published.center)
    dataset = SceneDataset(root, "all", num_input_views=2, num_target_views=1, box_source="observed")
    item = dataset[dataset.scenes.index(folder)]
    assert torch.equal(item["inputs"].boxes.size, fitted.size) and torch.equal(item["targets"].boxes.size, fitted.size)
    fits = []
    monkeypatch.setattr(dataset_module, "observed_boxes", lambda path: fits.append(path) or fitted)
    dataset.set_epoch(1)  # another view draw of the same scene: its boxes are not fitted again
    assert torch.equal(dataset[dataset.scenes.index(folder)]["inputs"].boxes.center, fitted.center) and fits == []
    with pytest.raises(ValueError, match="box_source must be one of metadata, observed"):
        read_scene(folder, box_source="tight")
    with pytest.raises(ValueError, match="box_source"):
        SceneDataset(root, "all", box_source="tight")


@pytest.fixture(scope="module")
def sample_boxes():
    sample = require_sample()
    return sample, as_yaw_boxes(read_scene_metadata(sample).boxes), as_yaw_boxes(observed_boxes(sample))


def test_observed_boxes_fit_the_real_sample(sample_boxes):
    sample, _, observed = sample_boxes
    check_fit(sample, observed)


def test_the_real_samples_published_boxes_are_centred_on_the_object_origins(sample_boxes):
    """Measured on banana_028 (docs/RESULTS.md, session 21): bbox[1] is each object's extent along its
    own axes, to the millimetre, but bbox[0] (= location) sits 2.0, 2.0 and 4.8 cm from the centre of
    that extent; the cracked banana's mesh axes differ from its twins', so its published box does too."""
    sample, published, observed = sample_boxes
    offsets = []
    for i, cloud in enumerate(object_points_reference(sample)):
        local = in_box_frame(cloud, published, i)
        extent = local.max(0) - local.min(0)
        np.testing.assert_allclose(extent, published.size[i].double().numpy(), atol=0.003)
        offsets.append(float(np.linalg.norm((local.max(0) + local.min(0)) / 2)))
    np.testing.assert_allclose(offsets, [0.048, 0.020, 0.020], atol=0.002)
    # copies of one shape: published footprints differ by 5 cm, observed ones agree within 1.5 cm
    assert (published.size[0, :2] - published.size[1, :2]).abs().max() > 0.04
    assert (observed.size[:, :2] - observed.size[1:2, :2]).abs().max() < 0.015
    iou = box_iou_3d(published, observed).diagonal()
    assert (iou < 0.8).all() and iou[0] < 0.6, iou


def test_carved_boxes_match_the_observed_boxes_of_the_real_sample(sample_boxes):
    """At the recipe's setting (5 views, 128 px, 2 cm voxels) the boxes carved from the GT masks miss
    the cracked banana's published box (IoU < 0.5) but match every observed box."""
    sample, published, observed = sample_boxes
    scene = read_scene(sample, views=[0, 4, 8, 12, 16], image_size=128)
    grid = VoxelGrid(shape=(128, 128, 32), voxel_size=0.02, origin=(-1.28, -1.28, 0.0))
    carved = boxes_from_occupancy(carve_occupancy(scene.masks.any(0), scene.K, scene.world_to_cam, grid))[0]
    assert len(carved.center) == 3
    best_published = box_iou_3d(carved, published).max(dim=0).values
    best_observed = box_iou_3d(carved, observed).max(dim=0).values
    assert best_published[0] < 0.5 and (best_observed > 0.55).all(), (best_published, best_observed)
