"""Prediction: scene and capture folders, overlays, cameras.json errors, weights-only checkpoints."""
import json
import pathlib
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from oddsparse.data.scene_io import SceneFormatError, read_scene, read_scene_metadata
from oddsparse.geometry.boxes import as_yaw_boxes, yaw_boxes_to_corners
from oddsparse.geometry.cameras import project_points
from oddsparse.predict import (ANOMALY_COLOUR, NORMAL_COLOUR, Prediction, draw_predictions, load_views, predict_scene,
                               read_capture_folder)
from reference_eval import TINY_SIZE, save_tiny_checkpoint, tiny_dataset, tiny_detector


@pytest.fixture(scope="module")
def scene_folder(tmp_path_factory):
    root = tiny_dataset(tmp_path_factory.getbasetemp())
    return sorted(p for p in root.iterdir() if (p / "scene3d.metadata.json").is_file())[0]


@pytest.fixture(scope="module")
def detector():
    return tiny_detector()


def make_capture(scene_folder, out, *, as_list=False):
    """A capture folder holding the scene's RGB views as cam_XX.png and a cameras.json."""
    meta = read_scene_metadata(scene_folder)
    out.mkdir(parents=True, exist_ok=True)
    names = [f"cam_{v:02d}.png" for v in range(meta.num_views)]
    for v, name in enumerate(names):
        shutil.copy(scene_folder / "RGB" / f"{v:04d}.png", out / name)
    poses = [meta.world_to_cam[v].tolist() for v in range(meta.num_views)]
    cameras = {"K": [k.tolist() for k in meta.K] if as_list else meta.K[0].tolist(),
               "world_to_cam": poses if as_list else dict(zip(names, poses))}
    (out / "cameras.json").write_text(json.dumps(cameras))
    return out


def test_capture_folder_reads_like_the_scene(scene_folder, tmp_path):
    scene = read_scene(scene_folder)
    for as_list in (False, True):
        capture = read_capture_folder(make_capture(scene_folder, tmp_path / f"capture{as_list}", as_list=as_list))
        assert torch.equal(capture.images, scene.images)
        assert torch.allclose(capture.K, scene.K) and torch.allclose(capture.world_to_cam, scene.world_to_cam)
        assert capture.names == [f"cam_{v:02d}.png" for v in range(scene.num_views)]


def test_views_n_are_the_evenly_spaced_views_eval_reads(scene_folder, tmp_path):
    """views=n picks floor(i * V / n) of the V stored views, as the eval protocol does (V = 6 here)."""
    assert read_scene_metadata(scene_folder).num_views == 6
    assert load_views(scene_folder, 3).names == ["view_0000", "view_0002", "view_0004"]
    assert load_views(scene_folder, 4).names == ["view_0000", "view_0001", "view_0003", "view_0004"]
    capture = make_capture(scene_folder, tmp_path / "capture")
    assert load_views(capture, 3).names == ["cam_00.png", "cam_02.png", "cam_04.png"]
    assert load_views(scene_folder, [5, 1]).names == ["view_0005", "view_0001"]


def test_predict_scene_folder_equals_capture_folder(scene_folder, detector, tmp_path):
    from_scene = predict_scene(detector, scene_folder, views=3)
    from_capture = predict_scene(detector, make_capture(scene_folder, tmp_path / "capture"), views=3)
    assert from_scene.num_objects >= 1
    for a, b in zip(from_scene.boxes, from_capture.boxes):
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(from_scene.scores, from_capture.scores, atol=1e-5)
    assert torch.equal(from_scene.labels, (from_scene.scores >= 0.5).long())
    # a score at the threshold is an anomaly, as oddsparse eval counts it (metrics: score >= score_threshold)
    at = float(from_scene.scores[0])
    assert predict_scene(detector, scene_folder, views=3, threshold=at).labels[0] == 1
    record = from_scene.to_dict()
    assert record["num_objects"] == from_scene.num_objects
    assert set(record["objects"][0]) == {"center", "size", "yaw", "score", "label", "anomalous"}


def test_draw_predictions_puts_boxes_where_they_project(scene_folder, tmp_path):
    scene = read_scene(scene_folder, views=[0, 3])
    boxes = as_yaw_boxes(scene.boxes)
    labels = torch.zeros(len(scene.labels), dtype=torch.int64)
    labels[0] = 1
    prediction = Prediction(boxes, torch.where(labels.bool(), 0.9, 0.1), labels)
    black = torch.zeros_like(scene.images)
    paths = draw_predictions(black, scene.K, scene.world_to_cam, prediction, tmp_path / "overlays")
    assert [p.name for p in paths] == ["view_0000.png", "view_0001.png"]
    # names that share a stem (another folder, another suffix) still write one file per view
    named = draw_predictions(black, scene.K, scene.world_to_cam, prediction, tmp_path / "named",
                             names=["cam0/000.png", "cam1/000.png"])
    assert [p.name for p in named] == ["cam0_000.png", "cam1_000.png"]
    assert len(list((tmp_path / "named").glob("*.png"))) == 2
    corners = yaw_boxes_to_corners(boxes.center, boxes.size, boxes.yaw)  # (O, 8, 3)
    for v, path in enumerate(paths):
        image = np.asarray(Image.open(path).convert("RGB"))
        scale = image.shape[0] // TINY_SIZE
        assert scale * TINY_SIZE == image.shape[0] == image.shape[1] and scale >= 4
        uv, _ = project_points(corners.reshape(-1, 3), scene.K[v], scene.world_to_cam[v])
        uv = uv.reshape(-1, 8, 2) * scale
        for colour, members in ((ANOMALY_COLOUR, [0]), (NORMAL_COLOUR, range(1, len(labels)))):
            rows, cols = np.nonzero((image == colour).all(axis=-1))
            allowed = np.zeros(len(rows), dtype=bool)
            for o in members:
                low, high = uv[o].min(dim=0).values.numpy(), uv[o].max(dim=0).values.numpy()
                # lines stay within the projected corners' rectangle (+ line width); the score text sits above it
                inside = (cols >= low[0] - 4) & (cols <= high[0] + 40) & (rows >= low[1] - 20) & (rows <= high[1] + 4)
                lines = (cols >= low[0] - 4) & (cols <= high[0] + 4) & (rows >= low[1] - 4) & (rows <= high[1] + 4)
                assert lines.sum() > 20, f"object {o} not drawn in view {v}"
                allowed |= inside
            assert allowed.all()


def test_predict_cli_writes_json_and_overlays(scene_folder, tmp_path, capsys):
    from oddsparse.cli import main

    checkpoint = save_tiny_checkpoint(tmp_path / "final.pt", scene_folder.parent)
    out = tmp_path / "pred"
    assert main(["predict", str(scene_folder), "--checkpoint", str(checkpoint), "--out", str(out),
                 "--views", "0,2,4"]) == 0
    record = json.loads((out / "prediction.json").read_text())
    assert record["views"] == ["view_0000", "view_0002", "view_0004"]
    assert record["image_size"] == [TINY_SIZE, TINY_SIZE]
    assert record["num_objects"] == len(record["objects"]) >= 1
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["view_0000.png", "view_0002.png", "view_0004.png"]
    assert "objects" in capsys.readouterr().out


def _break(cameras, case):
    name = sorted(cameras["world_to_cam"])[1]
    if case == "missing K":
        del cameras["K"]
        return "K", "missing"
    if case == "bad shape":
        cameras["world_to_cam"][name] = cameras["world_to_cam"][name][:3]
        return f"world_to_cam['{name}']", "4x4"
    if case == "not a rotation":
        cameras["world_to_cam"][name][0][0] = 3.0
        return f"world_to_cam['{name}']", "not a rotation"
    if case == "nan intrinsics":
        cameras["K"][0][2] = float("nan")
        return "K", "NaN"
    if case == "list count":
        cameras["world_to_cam"] = list(cameras["world_to_cam"].values())[:-1]
        return "world_to_cam", "lists 5 cameras"
    if case == "missing image":
        cameras["world_to_cam"]["nope.png"] = cameras["world_to_cam"][name]
        return "world_to_cam['nope.png']", "not found"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing K", "bad shape", "not a rotation", "nan intrinsics", "list count",
                                  "missing image"])
def test_malformed_cameras_json_names_file_and_field(scene_folder, tmp_path, case):
    folder = make_capture(scene_folder, tmp_path / "capture")
    cameras = json.loads((folder / "cameras.json").read_text())
    field, problem = _break(cameras, case)
    (folder / "cameras.json").write_text(json.dumps(cameras))
    with pytest.raises(SceneFormatError) as error:
        read_capture_folder(folder)
    message = str(error.value)
    assert str(folder / "cameras.json") in message and f"field '{field}'" in message and problem in message


def test_not_json_and_missing_cameras_file(tmp_path):
    (tmp_path / "cameras.json").write_text("{not json")
    with pytest.raises(SceneFormatError, match=r"cameras.json: field '<json>': malformed JSON"):
        read_capture_folder(tmp_path)
    (tmp_path / "cameras.json").write_text('{"K": [], "world_to_cam": {}}', encoding="utf-16")
    with pytest.raises(SceneFormatError, match=r"cameras.json: field '<file>': cannot be read \(.*utf-8"):
        read_capture_folder(tmp_path)
    (tmp_path / "cameras.json").write_text("[1, 2]")
    with pytest.raises(SceneFormatError, match=r"cameras.json: field '<root>': must be a JSON object, got list"):
        read_capture_folder(tmp_path)
    with pytest.raises(SceneFormatError, match="neither a scene folder"):
        predict_scene(None, tmp_path / "..")


def test_checkpoint_with_pickled_object_is_refused(scene_folder, tmp_path):
    from oddsparse.models.detector import load_detector

    marker = tmp_path / "code_ran"

    class Payload:  # unpickling it would create the marker file
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    path = save_tiny_checkpoint(tmp_path / "good.pt", scene_folder.parent)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["config"] = {"callback": Payload()}
    torch.save(checkpoint, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights-only load failed"):
        load_detector(tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.mark.parametrize("size", [8, (10, 14)])
def test_prediction_resizes_views_as_training_reads_them(scene_folder, tmp_path, size):
    """load_views(..., image_size) (what predict_scene and `oddsparse predict` run) gives the images and K that
    read_scene(..., image_size) (what training and eval read) gives, from a scene folder and a capture folder;
    a world point projects onto the resized pixel grid where it projected on the stored one, scaled."""
    from oddsparse.predict import load_views

    reference = read_scene(scene_folder, views=[0, 2], image_size=size)
    capture = make_capture(scene_folder, tmp_path / "capture")
    for source in (scene_folder, capture):
        views = load_views(source, [0, 2], image_size=size)
        assert torch.equal(views.images, reference.images), source
        assert torch.allclose(views.K, reference.K, atol=1e-6) and torch.equal(views.world_to_cam,
                                                                              reference.world_to_cam)
    stored = read_scene(scene_folder, views=[0, 2])
    height, width = (size, size) if isinstance(size, int) else size
    points = as_yaw_boxes(stored.boxes).center.expand(2, -1, -1)  # (V, O, 3) object centres
    before = project_points(points, stored.K, stored.world_to_cam)[0]  # (V, O, 2) pixel coordinates
    after = project_points(points, views.K, views.world_to_cam)[0]
    scale = torch.tensor([width / stored.image_size[1], height / stored.image_size[0]])
    assert torch.allclose(after, before * scale, atol=1e-4)


def test_fixable_options_and_unusable_checkpoints_end_in_one_line(scene_folder, tmp_path, capsys, monkeypatch):
    """Options out of range and weights-only checkpoints that build no detector end `oddsparse predict` / `eval`
    with one line naming the option or the checkpoint's field, exit status 2 (no traceback)."""
    from oddsparse.cli import main

    monkeypatch.delenv("ODDSPARSE_TRACEBACK", raising=False)
    good = save_tiny_checkpoint(tmp_path / "good.pt", scene_folder.parent)
    state = torch.load(good, weights_only=True)
    broken = {"tensor.pt": torch.zeros(3),
              "unknown_kwarg.pt": dict(state, detector_kwargs=dict(state["detector_kwargs"], no_such_option=1)),
              "missing_weight.pt": dict(state, model={k: v for i, (k, v) in enumerate(state["model"].items()) if i}),
              "kwargs_not_dict.pt": dict(state, scene_kwargs=[1, 2])}
    for name, payload in broken.items():
        torch.save(payload, tmp_path / name)
    root, out = scene_folder.parent, str(tmp_path / "out")
    cases = [(["predict", str(scene_folder), "--checkpoint", str(good), "--out", out, "--num-views", "0"],
              "cannot pick 0 views"),
             (["predict", str(scene_folder), "--checkpoint", str(good), "--out", out, "--views", "0,99"],
              "view 99 requested"),
             (["eval", "--checkpoint", str(good), "--data", str(root), "--out", out, "--split", "seen"],
              "split 'seen' is not defined"),
             (["eval", "--checkpoint", str(good), "--data", str(root), "--out", out, "--views", "3",
               "--primary-views", "5"], "primary_views=5 is not one of"),
             (["eval", "--checkpoint", str(good), "--data", str(root), "--out", out, "--views", "3", "--max-scenes", "-1"],
              "max_scenes must be >= 1"),
             (["eval", "--checkpoint", str(good), "--data", str(root), "--out", out, "--views", "3", "--image-size", "0"],
              "image_size must be a positive")]
    cases += [(["predict", str(scene_folder), "--checkpoint", str(tmp_path / name), "--out", out], message)
              for name, message in (("tensor.pt", "holds a Tensor, not an oddsparse detector checkpoint"),
                                    ("unknown_kwarg.pt", "'detector_kwargs' do not build a detector"),
                                    ("missing_weight.pt", "field 'model' does not fit"),
                                    ("kwargs_not_dict.pt", "field 'scene_kwargs' is a list"))]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_overlay_names_are_distinct_per_view():
    from oddsparse.predict import _overlay_names

    assert _overlay_names(None, 2) == ["view_0000", "view_0001"]
    assert _overlay_names(["a.png", "b.png"], 2) == ["a", "b"]
    assert _overlay_names(["a.png", "a.jpg", "b.png"], 3) == ["a_png", "a_jpg", "b"]
    assert _overlay_names(["x/a.png", "y/a.png"], 2) == ["x_a", "y_a"]
    assert _overlay_names(["a_png.png", "a.png", "a.jpg"], 3) == ["a_png_0000", "a_png_0001", "a_jpg"]  # the index
    assert len(set(_overlay_names(["v.png"] * 3, 3))) == 3  # settles what is left
