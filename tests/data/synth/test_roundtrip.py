"""Generated scenes read back through the published-format reader with no special case."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from oddsparse.data import read_scene
from oddsparse.data.synth import generate_dataset
from oddsparse.geometry.cameras import project_points, unproject_depth

SIZE, VIEWS = 128, 6


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("roundtrip")
    folders = generate_dataset(out, "toys", 2, seed=4, objects=(4, 6), views=VIEWS, size=SIZE, progress=False)
    return [(folder, read_scene(folder)) for folder in folders]


def test_reader_sees_what_was_written(scenes):
    for folder, scene in scenes:
        meta = json.loads((folder / "scene3d.metadata.json").read_text())
        assert scene.name == folder.name and scene.category == folder.name.split("_")[0]
        assert scene.images.shape == (VIEWS, SIZE, SIZE, 3)
        assert scene.object_names == [o["name"] for o in meta["objects"]]
        kinds = [o["path"].rsplit("/", 1)[-1][:-len(".blend")].split("-")[1:2] for o in meta["objects"]]
        assert scene.anomaly_types == [k[0] if k else "" for k in kinds]
        assert scene.labels.tolist() == [1 if k else 0 for k in kinds]
        assert 2 * int(scene.labels.sum()) < len(kinds)
        np.testing.assert_allclose(scene.boxes.center.numpy(), [o["location"] for o in meta["objects"]], atol=1e-6)
        assert scene.floor_mask is not None
        # depth is finite exactly where an object or the floor is seen
        seen = scene.masks.any(0) | scene.floor_mask
        assert torch.equal(torch.isfinite(scene.depth), seen)


def test_the_reader_reads_the_renders_pixel_for_pixel(scenes):
    """Each scene laid out again from its seed and index and rendered again: the views, masks and depth read back
    from its folder are those renders (colour channels in order, masks by object, depth in metres)."""
    from oddsparse.data.synth.render import render_views
    from oddsparse.data.synth.scene import generate_scene

    for index, (folder, scene) in enumerate(scenes):  # generate_dataset returns the folders in index order
        spec = generate_scene("toys", seed=4, index=index, objects=(4, 6), views=VIEWS, size=SIZE)
        assert spec.name == folder.name
        renders = render_views(spec.raycaster(), spec.light, spec.K, spec.world_to_cam, SIZE, seed=spec.texture_seed)
        for view, render in enumerate(renders):
            np.testing.assert_array_equal(scene.images[view].numpy(), render.rgb)
            for o in range(scene.num_objects):
                np.testing.assert_array_equal(scene.masks[o, view].numpy(), render.labels == o + 1)
            on = render.labels >= 0
            np.testing.assert_allclose(scene.depth[view].numpy()[on], render.depth[on], rtol=1e-6)
            assert np.isinf(scene.depth[view].numpy()[~on]).all()


def test_projected_locations_land_on_their_masks(scenes):
    """Median distance from an object's projected location to its mask centroid is < 10 px at 256 px."""
    distances = []
    for _, scene in scenes:
        uv, _ = project_points(scene.boxes.center[None].double(), scene.K.double(), scene.world_to_cam.double())
        for o in range(scene.num_objects):
            for v in range(scene.num_views):
                rows, cols = torch.nonzero(scene.masks[o, v], as_tuple=True)
                if len(rows) < 20:
                    continue
                centroid = torch.stack([cols.double().mean() + 0.5, rows.double().mean() + 0.5])
                distances.append(float((uv[v, o] - centroid).norm()))
    assert len(distances) > 20
    assert np.median(distances) < 10.0 * SIZE / 256, np.median(distances)


def test_depth_back_projection_lands_in_the_objects_boxes(scenes):
    """Back-projected mask pixels fall inside their object's oriented box; floor pixels on z = 0."""
    for _, scene in scenes:
        points, valid = unproject_depth(scene.depth.double(), scene.K.double(), scene.world_to_cam.double())
        floor = points[scene.floor_mask]
        assert valid[scene.floor_mask].all()
        assert floor[:, 2].abs().max() < 1e-3
        for o in range(scene.num_objects):
            world = points[scene.masks[o]]  # (P, 3)
            local = (world - scene.boxes.center[o].double()) @ scene.boxes.rotation[o].double()
            inside = (local.abs() <= scene.boxes.size[o].double() / 2 + 2e-3).all(-1).double().mean()
            needed = 0.9 if scene.labels[o] else 0.999  # an anomaly may stick out of the normal shape's box
            assert inside >= needed, f"{scene.name}/{scene.object_names[o]}: {inside:.3f} inside its box"
            if not scene.labels[o]:  # and the box is tight: what the views show of a normal object spans it
                extent = (local.max(0).values - local.min(0).values) / scene.boxes.size[o].double()
                assert (extent > 0.8).all(), f"{scene.name}/{scene.object_names[o]}: seen extent {extent.tolist()}"
