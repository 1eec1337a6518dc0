"""read_scene on the real published sample scene, and one malformed-input test per failure kind."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from oddsparse.data import SceneFormatError, read_scene
from oddsparse.data.scene_io import anomaly_type_from_path, check_scene
from oddsparse.geometry.cameras import project_points
from reference_data import copy_scene, require_sample, sample_metadata


@pytest.fixture(scope="module")
def sample():
    return require_sample()


@pytest.fixture(scope="module")
def full_scene(sample):
    return read_scene(sample)


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """The sample with all 20 poses in its metadata but only the files of views 0 and 1."""
    return copy_scene(tmp_path_factory.mktemp("mini") / "banana_028-mini", views=[0, 1])


@pytest.fixture
def broken(mini, tmp_path):
    """A fresh copy of the mini scene to corrupt."""
    dst = tmp_path / "banana_028-broken"
    shutil.copytree(mini, dst)
    return dst


def _mask_centroids(masks):
    """(O, V, H, W) bool -> (O, V, 2) (u, v) centroid of each mask under the index + 0.5 rule; NaN if empty."""
    num, views, height, width = masks.shape
    uv = torch.full((num, views, 2), float("nan"))
    for o in range(num):
        for v in range(views):
            rows, cols = torch.nonzero(masks[o, v], as_tuple=True)
            if len(rows):
                uv[o, v] = torch.stack([cols.float().mean() + 0.5, rows.float().mean() + 0.5])
    return uv


# ----------------------------------------------------------------------------- the real sample


def test_sample_shapes_and_names(full_scene, sample):
    scene = full_scene
    meta = sample_metadata()
    assert scene.num_views == 20 and scene.num_objects == 3 and scene.image_size == (256, 256)
    assert scene.images.shape == (20, 256, 256, 3) and scene.images.dtype == torch.uint8
    assert scene.masks.shape == (3, 20, 256, 256) and scene.masks.dtype == torch.bool
    assert scene.depth.dtype == torch.float32 and scene.K.dtype == torch.float32
    assert scene.object_names == [obj["name"] for obj in meta["objects"]]
    assert scene.name == sample.name and scene.category == "banana"
    assert torch.equal(scene.view_ids, torch.arange(20))
    assert torch.equal(scene.K[7], torch.tensor(meta["camera"]["K"], dtype=torch.float32))
    assert torch.equal(scene.world_to_cam[7], torch.tensor(meta["camera"]["poses"][7]["rotation"]))
    assert torch.equal(scene.boxes.center, torch.tensor([o["location"] for o in meta["objects"]]))
    assert torch.equal(scene.boxes.size, torch.tensor([o["bbox"][1] for o in meta["objects"]]))
    rotations = torch.tensor([o["rotation_matrix"] for o in meta["objects"]])[:, :3, :3]
    assert torch.allclose(scene.boxes.rotation, rotations)


def test_sample_labels_from_blend_names(full_scene):
    meta = sample_metadata()
    crack = [i for i, obj in enumerate(meta["objects"]) if "-crack-" in obj["path"]]
    assert len(crack) == 1
    expected = torch.zeros(3, dtype=torch.int64)
    expected[crack[0]] = 1
    assert torch.equal(full_scene.labels, expected)
    assert full_scene.anomaly_types == ["crack" if i == crack[0] else "" for i in range(3)]
    # scene2d's anomaly_labels says the opposite (1 = normal): we must not follow it
    labels_2d = json.loads((require_sample() / "scene2d.metadata.json").read_text())["anomaly_labels"]
    assert labels_2d[crack[0]] == 0


def test_anomaly_type_rule():
    assert anomaly_type_from_path("/a/b/banana_028-crack-001.blend") == "crack"
    assert anomaly_type_from_path("toy_car_003-miss-12.blend") == "miss"
    assert anomaly_type_from_path("/a/banana_028/banana_028.blend") == ""
    assert anomaly_type_from_path("part_17.blend") == ""


def test_sample_masks_match_files(full_scene, sample):
    name = full_scene.object_names[1]
    raw = np.asarray(Image.open(sample / "segmentations" / name / f"{name}_0004.png"))
    assert raw.ndim == 3 and raw.shape[-1] == 4  # RGBA on the published data
    assert torch.equal(full_scene.masks[1, 4], torch.from_numpy(raw[..., 0] > 127))
    # published masks do not overlap and every object is visible in every view of the sample
    assert full_scene.masks.sum(0).max() == 1
    assert (full_scene.masks.sum((2, 3)) > 0).all()
    assert full_scene.floor_mask is not None and not (full_scene.floor_mask & full_scene.masks.any(0)).any()


def test_sample_depth_background_is_inf(full_scene, sample):
    import OpenEXR

    raw = np.asarray(OpenEXR.File(str(sample / "depth_exr" / "0003.exr")).channels()["RGB"].pixels)[..., 0]
    background = torch.from_numpy(raw >= 1e9)
    assert background.any() and (~background).any()
    depth = full_scene.depth[3]
    assert torch.isinf(depth[background]).all() and (depth[background] > 0).all()
    assert torch.equal(depth[~background], torch.from_numpy(raw)[~background])
    # objects and floor are at finite metric depth (a few metres at most)
    foreground = full_scene.masks.any(0) | full_scene.floor_mask
    assert torch.isfinite(full_scene.depth[foreground]).all()
    assert 0.1 < full_scene.depth[foreground].min() and full_scene.depth[foreground].max() < 10.0


def test_locations_project_onto_masks_at_both_sizes(full_scene, sample):
    views = list(range(0, 20, 3))
    small = read_scene(sample, views=views, image_size=128)
    big = full_scene.select_views(views)
    assert small.image_size == (128, 128)
    for scene, tolerance in ((big, 10.0), (small, 5.0)):
        uv, depth = project_points(scene.boxes.center[None].expand(len(views), -1, -1), scene.K, scene.world_to_cam)
        assert (depth > 0).all()
        error = (uv.transpose(0, 1) - _mask_centroids(scene.masks)).norm(dim=-1)  # (O, V)
        assert error.median() < tolerance
    # the same world point lands at half the pixel coordinates at 128 px, and the 128-px masks'
    # centroids are the 256-px centroids halved (within resampling error)
    uv_big, _ = project_points(big.boxes.center[None].expand(len(views), -1, -1), big.K, big.world_to_cam)
    uv_small, _ = project_points(small.boxes.center[None].expand(len(views), -1, -1), small.K, small.world_to_cam)
    assert torch.allclose(uv_small, uv_big / 2, atol=1e-4)
    assert torch.allclose(_mask_centroids(small.masks), _mask_centroids(big.masks) / 2, atol=1.0)


def test_resize_samples_pixel_centres(full_scene, sample):
    small = read_scene(sample, views=[2, 9], image_size=(128, 64))
    big = full_scene.select_views([2, 9])
    # nearest at pixel centres: output pixel (i, j) reads input (2i + 1, 4j + 2) for factors (2, 4)
    assert torch.equal(small.depth, big.depth[:, 1::2, 2::4])
    assert torch.equal(small.masks, big.masks[:, :, 1::2, 2::4])
    assert torch.equal(small.floor_mask, big.floor_mask[:, 1::2, 2::4])
    expected_K = big.K.clone()
    expected_K[:, 0] /= 4
    expected_K[:, 1] /= 2
    assert torch.allclose(small.K, expected_K)
    # images: antialiased resampling stays close to block averages
    blocks = torch.nn.functional.avg_pool2d(big.images.permute(0, 3, 1, 2).float(), (2, 4))
    assert (small.images.permute(0, 3, 1, 2).float() - blocks).abs().mean() < 3.0
    assert torch.equal(small.world_to_cam, big.world_to_cam)


def test_views_subset_reads_only_those(full_scene, sample, tmp_path):
    subset = read_scene(sample, views=[7, 3])
    expected = full_scene.select_views([7, 3])
    for field in ("images", "masks", "depth", "K", "world_to_cam", "view_ids", "floor_mask"):
        assert torch.equal(getattr(subset, field), getattr(expected, field)), field
    # a copy holding only the files of views 3 and 7 reads them, and fails on any other view
    only = copy_scene(tmp_path / "banana_028-only", views=[3, 7])
    assert torch.equal(read_scene(only, views=[3, 7]).images, expected.images.flip(0))
    with pytest.raises(SceneFormatError):
        read_scene(only)


def test_check_scene_accepts_sample(sample):
    assert check_scene(sample).num_views == 20


# ----------------------------------------------------------------------------- malformed input


def _expect(path, field, fn):
    with pytest.raises(SceneFormatError) as info:
        fn()
    err = info.value
    assert err.path == path, (err.path, path)
    assert err.field == field, (err.field, field)
    assert str(path) in str(err) and field in str(err)
    return err


def _edit_metadata(scene, edit):
    file = scene / "scene3d.metadata.json"
    meta = json.loads(file.read_text())
    edit(meta)
    file.write_text(json.dumps(meta))
    return file


def test_mini_copy_reads(mini):
    scene = read_scene(mini, views=[0, 1])
    assert scene.num_views == 2 and scene.num_objects == 3


def test_missing_view_image(broken):
    _expect(broken / "RGB" / "0002.png", "RGB", lambda: read_scene(broken, views=[0, 2]))
    _expect(broken / "RGB" / "0002.png", "RGB", lambda: check_scene(broken, views=[0, 2]))


def test_missing_view_depth(broken):
    (broken / "depth_exr" / "0001.exr").unlink()
    _expect(broken / "depth_exr" / "0001.exr", "depth", lambda: read_scene(broken, views=[0, 1]))


def test_missing_view_mask(broken):
    (broken / "segmentations" / "object" / "object_0001.png").unlink()
    _expect(broken / "segmentations" / "object" / "object_0001.png", "segmentations/object",
            lambda: read_scene(broken, views=[0, 1]))


def test_view_index_out_of_range(broken):
    _expect(broken / "scene3d.metadata.json", "camera.poses", lambda: read_scene(broken, views=[0, 20]))


def test_corrupt_png_image(broken):
    file = broken / "RGB" / "0001.png"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])  # truncated
    err = _expect(file, "RGB", lambda: read_scene(broken, views=[0, 1]))
    assert "corrupt PNG" in str(err)


def test_corrupt_png_mask(broken):
    file = broken / "segmentations" / "object.001" / "object.001_0000.png"
    file.write_bytes(b"\x89PNG not really a png")
    _expect(file, "segmentations/object.001", lambda: read_scene(broken, views=[0, 1]))


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_exr(broken, damage):
    file = broken / "depth_exr" / "0000.exr"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not an exr" * 20)
    err = _expect(file, "depth", lambda: read_scene(broken, views=[0, 1]))
    assert "corrupt EXR" in str(err)


def test_malformed_json(broken):
    file = broken / "scene3d.metadata.json"
    text = file.read_text()
    file.write_text(text[: len(text) // 2])
    err = _expect(file, "<json>", lambda: read_scene(broken, views=[0, 1]))
    assert "malformed JSON" in str(err)


def test_missing_json_field(broken):
    file = _edit_metadata(broken, lambda m: m["objects"][1].pop("bbox"))
    _expect(file, "objects[1].bbox", lambda: read_scene(broken, views=[0, 1]))


def test_nan_camera(broken):
    def edit(meta):
        meta["camera"]["poses"][1]["rotation"][0][3] = float("nan")  # json writes NaN
    file = _edit_metadata(broken, edit)
    err = _expect(file, "camera.poses[1].rotation", lambda: read_scene(broken, views=[0, 1]))
    assert "NaN" in str(err)


def test_singular_camera_extrinsics(broken):
    def edit(meta):
        rotation = meta["camera"]["poses"][0]["rotation"]
        for row in range(3):
            rotation[row][:3] = [1.0, 0.0, 0.0]  # rank-1 block
    file = _edit_metadata(broken, edit)
    err = _expect(file, "camera.poses[0].rotation", lambda: read_scene(broken, views=[0, 1]))
    assert "singular" in str(err)


def test_singular_camera_intrinsics(broken):
    def edit(meta):
        meta["camera"]["K"][1][1] = 0.0
    file = _edit_metadata(broken, edit)
    err = _expect(file, "camera.K", lambda: read_scene(broken, views=[0, 1]))
    assert "singular" in str(err)


def test_mask_folder_without_object(broken):
    ghost = broken / "segmentations" / "object.007"
    shutil.copytree(broken / "segmentations" / "object", ghost)
    err = _expect(ghost, "segmentations", lambda: read_scene(broken, views=[0, 1]))
    assert "object.007" in str(err)
    _expect(ghost, "segmentations", lambda: check_scene(broken, views=[0, 1]))


def test_object_without_mask_folder(broken):
    shutil.rmtree(broken / "segmentations" / "object.002")
    index = [o["name"] for o in sample_metadata()["objects"]].index("object.002")
    err = _expect(broken / "scene3d.metadata.json", f"objects[{index}].name",
                  lambda: read_scene(broken, views=[0, 1]))
    assert "object.002" in str(err) and "mask folder" in str(err)


def test_scene_without_objects(broken):
    def edit(meta):
        meta["objects"] = []
    file = _edit_metadata(broken, edit)
    err = _expect(file, "objects", lambda: read_scene(broken, views=[0, 1]))
    assert "no objects" in str(err)


def test_error_is_value_error():
    assert issubclass(SceneFormatError, ValueError)  # callers may catch ValueError


def test_category_of_scene_names_by_hand():
    from oddsparse.data.scene_io import category_of

    assert category_of("banana_028-sample") == "banana" and category_of("parts_0007") == "parts"
    assert category_of("toy_car_0001") == "toy" and category_of("plain") == "plain"  # the first "_" only


def _set(path, value):
    """An edit of the metadata: ``meta[path[0]][path[1]]... = value`` (``value(old)`` when callable)."""
    def edit(meta):
        node = meta
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value(node[path[-1]]) if callable(value) else value
    return edit


def _reflect(rotation):
    return [[-x for x in rotation[0]], *rotation[1:]]  # det(R) = -1: a reflection, not a rotation


# one malformed metadata field per row: (edit, field the error names, words of the problem)
MALFORMED = {
    "K not numbers": (_set(["camera", "K"], "abc"), "camera.K", "matrix of numbers"),
    "K not 3x3": (_set(["camera", "K"], [[1.0, 0.0], [0.0, 1.0]]), "camera.K", "got shape (2, 2)"),
    "K last row": (_set(["camera", "K", 2], [0.0, 0.0, 2.0]), "camera.K", "last row must be [0, 0, 1]"),
    "K missing": (lambda m: m["camera"].pop("K"), "camera.K", "missing"),
    "per-view K singular": (_set(["camera", "poses", 0, "K"], [[0.0] * 3] * 3), "camera.poses[0].K", "singular"),
    "no poses": (_set(["camera", "poses"], []), "camera.poses", "non-empty list"),
    "pose last row": (_set(["camera", "poses", 0, "rotation", 3], [0.0, 0.0, 0.0, 2.0]), "camera.poses[0].rotation",
                      "last row must be [0, 0, 0, 1]"),
    "pose reflection": (_set(["camera", "poses", 1, "rotation"], _reflect), "camera.poses[1].rotation",
                        "not a rotation"),
    "name with a slash": (_set(["objects", 0, "name"], "a/b"), "objects[0].name", "non-empty file name"),
    "duplicate name": (lambda m: m["objects"][1].update(name=m["objects"][0]["name"]), "objects[1].name",
                       "duplicate object name"),
    "floor name": (_set(["objects", 2, "name"], "floor_object"), "objects[2].name", "reserved for the floor"),
    "path not a string": (_set(["objects", 0, "path"], 3), "objects[0].path", "file path string"),
    "location not numbers": (_set(["objects", 0, "location"], "x"), "objects[0].location", "must be 3 numbers"),
    "location of 2": (_set(["objects", 1, "location"], [1.0, 2.0]), "objects[1].location", "got shape (2,)"),
    "location NaN": (_set(["objects", 1, "location", 0], float("nan")), "objects[1].location", "NaN"),
    "negative size": (_set(["objects", 0, "bbox", 1, 2], -0.1), "objects[0].bbox[1]", "box size must be >= 0"),
    "singular object rotation": (_set(["objects", 1, "rotation_matrix"], [[0.0] * 4] * 4),
                                 "objects[1].rotation_matrix", "singular object rotation"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_metadata_names_the_file_and_the_field(broken, case):
    from oddsparse.data.scene_io import read_scene_metadata

    edit, field, problem = MALFORMED[case]
    file = _edit_metadata(broken, edit)
    err = _expect(file, field, lambda: read_scene_metadata(broken))
    assert problem in err.problem, err.problem


@pytest.mark.parametrize("content, field, problem", [(b"[1, 2]", "<root>", "must be a JSON object, got list"),
                                                     (b"\xff\xfe{", "<file>", "cannot be read")])
def test_metadata_that_is_no_json_object_names_the_file(broken, content, field, problem):
    from oddsparse.data.scene_io import read_scene_metadata

    file = broken / "scene3d.metadata.json"
    file.write_bytes(content)
    err = _expect(file, field, lambda: read_scene_metadata(broken))
    assert problem in err.problem, err.problem


def test_blend_paths_from_scene2d_metadata(broken):
    """Objects without a "path" take it from scene2d.metadata.json's blend_paths (in object order): the same
    labels; without that file the error names it."""
    from oddsparse.data.scene_io import read_scene_metadata

    expected = read_scene_metadata(broken).anomaly_types
    paths = [obj["path"] for obj in sample_metadata()["objects"]]
    file = _edit_metadata(broken, lambda m: [obj.pop("path") for obj in m["objects"]])
    second = broken / "scene2d.metadata.json"
    second.unlink(missing_ok=True)
    _expect(second, "<file>", lambda: read_scene_metadata(broken))
    second.write_text(json.dumps({"blend_paths": paths[:2]}))  # one path short
    _expect(second, "blend_paths[2]", lambda: read_scene_metadata(broken))
    second.write_text(json.dumps({"blend_paths": "/".join(paths)}))  # one string: not read character by character
    _expect(second, "blend_paths", lambda: read_scene_metadata(broken))
    second.write_text(json.dumps({"blend_paths": paths}))
    assert read_scene_metadata(broken).anomaly_types == expected and "crack" in expected
    assert file.is_file()


def test_parse_camera_matrix_kind_is_checked():
    from oddsparse.data.scene_io import parse_camera_matrix

    with pytest.raises(ValueError, match="kind must be 'K' or 'world_to_cam', got 'R'"):
        parse_camera_matrix(Path("cameras.json"), np.eye(3).tolist(), "K", "R")


def test_palette_pngs_read_through_their_palette(tmp_path):
    """A view or a mask stored as a palette PNG (mode P) reads as the colours its palette gives (PIL's own
    conversion), not as palette indices: a generated scene with view 0 and one mask re-saved that way."""
    from reference_eval import tiny_dataset

    root = tiny_dataset(tmp_path / "data")
    scene = sorted(p for p in root.iterdir() if (p / "scene3d.metadata.json").is_file())[0]
    plain = read_scene(scene, views=[0])
    view = scene / "RGB" / "0000.png"
    palette_view = Image.open(view).convert("RGB").quantize(colors=64)
    palette_view.save(view)
    mask_file = sorted((scene / "segmentations").glob("*/*_0000.png"))[0]
    with Image.open(mask_file) as image:
        mask = np.asarray(image.convert("L")) > 127
    palette_mask = Image.fromarray(mask.astype(np.uint8), mode="P")  # indices 0 / 1 ...
    palette_mask.putpalette([0, 0, 0, 255, 255, 255])  # ... black and white
    palette_mask.save(mask_file)
    assert Image.open(view).mode == "P" and Image.open(mask_file).mode == "P"
    read = read_scene(scene, views=[0])
    expected_view = np.asarray(palette_view.convert("RGB"))
    assert np.array_equal(read.images[0].numpy(), expected_view)
    assert np.abs(expected_view.astype(int) - plain.images[0].numpy()).mean() < 8  # 64 colours: close to the view
    assert torch.equal(read.masks, plain.masks) and read.masks.any()
