"""Boxes, Scene and SceneBatch: validation, hand-computed geometry, view selection and collation."""
from __future__ import annotations

import math

import pytest
import torch

from oddsparse.structures import Boxes, Scene, SceneBatch


def _yaw_rotation(yaw: float) -> torch.Tensor:
    c, s = math.cos(yaw), math.sin(yaw)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _scene(views=3, objects=2, height=4, width=5, name="car_001", **changes) -> Scene:
    gen = torch.Generator().manual_seed(views * 10 + objects)
    fields = dict(
        images=torch.randint(0, 256, (views, height, width, 3), dtype=torch.uint8, generator=gen),
        masks=torch.rand(objects, views, height, width, generator=gen) > 0.5,
        depth=torch.rand(views, height, width, generator=gen) + 1.0,
        K=torch.eye(3).repeat(views, 1, 1) * torch.arange(1, views + 1).float()[:, None, None],
        world_to_cam=torch.eye(4).repeat(views, 1, 1),
        boxes=Boxes(torch.rand(objects, 3, generator=gen), torch.ones(objects, 3), torch.eye(3).repeat(objects, 1, 1)),
        labels=torch.tensor([1] + [0] * (objects - 1), dtype=torch.int64),
        anomaly_types=["crack"] + [""] * (objects - 1),
        object_names=[f"object.{i:03d}" for i in range(objects)],
        name=name, category=name.split("_")[0],
        view_ids=torch.arange(views, dtype=torch.int64) * 2,
    )
    fields.update(changes)
    return Scene(**fields)


def test_box_corners_hand_computed():
    boxes = Boxes(center=torch.tensor([[1.0, 2.0, 0.5]]), size=torch.tensor([[2.0, 4.0, 1.0]]),
                  rotation=_yaw_rotation(math.pi / 2)[None])
    corners = boxes.corners()
    assert corners.shape == (1, 8, 3)
    # corner 0 has box-frame offset (-1, -2, -0.5); a 90-degree yaw maps (x, y) -> (-y, x)
    assert torch.allclose(corners[0, 0], torch.tensor([1.0 + 2.0, 2.0 - 1.0, 0.0]), atol=1e-6)
    # corner 6 = bits (1, 1, 0): offset (1, 2, -0.5) -> (-2, 1, -0.5)
    assert torch.allclose(corners[0, 6], torch.tensor([1.0 - 2.0, 2.0 + 1.0, 0.0]), atol=1e-6)
    assert torch.allclose(corners.mean(1), boxes.center, atol=1e-6)
    # every edge of the box has one of the three lengths
    edges = torch.cdist(corners[0], corners[0])
    assert torch.allclose(edges[0, [1, 2, 4]], torch.tensor([1.0, 4.0, 2.0]), atol=1e-5)


def test_box_yaw_and_indexing():
    yaws = [0.3, -2.5, 3.0]
    boxes = Boxes(torch.zeros(3, 3), torch.ones(3, 3), torch.stack([_yaw_rotation(y) for y in yaws]))
    assert torch.allclose(boxes.yaw, torch.tensor(yaws), atol=1e-6)
    assert len(boxes[1]) == 1 and torch.allclose(boxes[1].yaw, torch.tensor([-2.5]))
    assert len(boxes[torch.tensor([True, False, True])]) == 2
    assert len(Boxes.cat([boxes, boxes[0]])) == 4
    import numpy as np

    for integer in (torch.tensor(1), np.int64(1), torch.tensor(-2)):  # integer-like indices select one box
        assert len(boxes[integer]) == 1 and torch.allclose(boxes[integer].yaw, torch.tensor([-2.5]))


@pytest.mark.parametrize("kwargs, message", [
    (dict(center=torch.zeros(2, 2)), "center must have shape"),
    (dict(size=torch.ones(3, 3)), "size must have shape"),
    (dict(rotation=torch.eye(3).repeat(2, 1, 1).double()), "rotation must be torch.float32"),
    (dict(size=-torch.ones(2, 3)), ">= 0"),
    (dict(center=torch.full((2, 3), float("nan"))), "finite"),
])
def test_box_validation(kwargs, message):
    fields = dict(center=torch.zeros(2, 3), size=torch.ones(2, 3), rotation=torch.eye(3).repeat(2, 1, 1))
    fields.update(kwargs)
    with pytest.raises(ValueError, match=message):
        Boxes(**fields)


@pytest.mark.parametrize("change, message", [
    (dict(images=torch.zeros(3, 4, 5, 3)), r"images must be torch.uint8"),
    (dict(masks=torch.zeros(2, 3, 4, 5, dtype=torch.uint8)), r"masks must be torch.bool"),
    (dict(masks=torch.zeros(2, 3, 4, 6, dtype=torch.bool)), r"masks must have shape \(\*, 3, 4, 5\)"),
    (dict(depth=torch.zeros(3, 4, 5, dtype=torch.float64)), r"depth must be torch.float32"),
    (dict(K=torch.eye(3).repeat(2, 1, 1)), r"K must have shape \(3, 3, 3\)"),
    (dict(world_to_cam=torch.eye(3).repeat(3, 1, 1)), r"world_to_cam must have shape"),
    (dict(labels=torch.tensor([1, 0], dtype=torch.int32)), r"labels must be torch.int64"),
    (dict(labels=torch.tensor([2, 0])), r"0 \(normal\) or 1"),
    (dict(anomaly_types=["", ""]), r"disagrees"),
    (dict(object_names=["a"]), r"object_names must be a list of O = 2"),
    (dict(view_ids=torch.arange(2)), r"view_ids must have shape \(3,\)"),
    (dict(floor_mask=torch.zeros(3, 4, 5)), r"floor_mask must be torch.bool"),
    (dict(boxes=Boxes(torch.zeros(1, 3), torch.ones(1, 3), torch.eye(3)[None])), r"boxes must be Boxes with O = 2"),
])
def test_scene_validation(change, message):
    with pytest.raises(ValueError, match=message):
        _scene(**change)


def test_scene_select_views_and_to():
    scene = _scene(views=4, floor_mask=torch.zeros(4, 4, 5, dtype=torch.bool))
    assert scene.num_views == 4 and scene.num_objects == 2 and scene.image_size == (4, 5)
    picked = scene.select_views([3, 1])
    assert picked.view_ids.tolist() == [6, 2]
    assert torch.equal(picked.images[0], scene.images[3]) and torch.equal(picked.masks[:, 1], scene.masks[:, 1])
    assert torch.equal(picked.K[0], scene.K[3]) and picked.floor_mask.shape == (2, 4, 5)
    assert picked.labels is scene.labels and picked.object_names == scene.object_names
    masked = scene.select_views(torch.tensor([False, True, False, True]))  # a mask picks views 1 and 3
    assert masked.view_ids.tolist() == [scene.view_ids[1].item(), scene.view_ids[3].item()]
    with pytest.raises(ValueError, match="bool mask needs 4 entries"):
        scene.select_views([True, False])
    moved = scene.to("cpu")
    assert moved.images.dtype == torch.uint8 and torch.equal(moved.depth, scene.depth)
    with pytest.raises(Exception):
        scene.name = "other"  # frozen


def test_scene_batch_from_scenes():
    a, b = _scene(views=2, objects=3, name="car_001"), _scene(views=3, objects=1, name="cup_001")
    batch = SceneBatch.from_scenes([a, b])
    assert batch.batch_size == 2 and batch.num_views == 3
    assert batch.object_batch_index.tolist() == [0, 0, 0, 1] and batch.num_objects.tolist() == [3, 1]
    assert batch.view_valid.tolist() == [[True, True, False], [True, True, True]]
    assert torch.equal(batch.images[0, :2], a.images) and (batch.images[0, 2] == 0).all()
    assert torch.equal(batch.masks[3], b.masks[0]) and not batch.masks[:3, 2].any()
    assert torch.equal(batch.labels, torch.tensor([1, 0, 0, 1]))
    assert torch.equal(batch.boxes.center, torch.cat([a.boxes.center, b.boxes.center]))
    assert batch.to("cpu").scenes[1].name == "cup_001"


def _posed(views: int) -> torch.Tensor:
    """(V, 4, 4) world-to-camera transforms, each view turned and moved differently."""
    poses = torch.eye(4).repeat(views, 1, 1)
    for v in range(views):
        poses[v, :3, :3] = _yaw_rotation(0.3 * (v + 1))
        poses[v, :3, 3] = torch.tensor([v + 1.0, -v, 2.0 * v])
    return poses


def test_scene_batch_carries_each_scenes_cameras_and_depth_and_pads_with_identity_and_inf():
    a = _scene(views=2, objects=3, name="car_001", world_to_cam=_posed(2))
    b = _scene(views=3, objects=1, name="cup_001", world_to_cam=_posed(3).flip(0).contiguous())
    batch = SceneBatch.from_scenes([a, b])
    for index, scene in enumerate((a, b)):
        views = scene.num_views
        assert torch.equal(batch.K[index, :views], scene.K)
        assert torch.equal(batch.world_to_cam[index, :views], scene.world_to_cam)
        assert torch.equal(batch.depth[index, :views], scene.depth)
    # the padded view of the 2-view scene: identity cameras, no depth
    assert torch.equal(batch.K[0, 2], torch.eye(3)) and torch.equal(batch.world_to_cam[0, 2], torch.eye(4))
    assert torch.isinf(batch.depth[0, 2]).all()
