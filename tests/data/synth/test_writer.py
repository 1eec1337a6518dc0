"""Generated datasets: published folder format, determinism, resumption after a kill, splits, contact sheet."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oddsparse.cli import main
from oddsparse.data.synth import generate_dataset
from oddsparse.data.synth.shapes import FLAT_TOY_CATEGORIES, TOY_CATEGORIES
from oddsparse.data.synth.writer import dataset_splits
from reference_data import require_sample
from reference_synth import outline_reference

REPO = Path(__file__).resolve().parents[3]
ARGS = dict(family="parts", scenes=3, seed=0, objects=(3, 4), views=4, size=64)
CLI_ARGS = ["--family", "parts", "--scenes", "3", "--seed", "0", "--objects", "3-4", "--views", "4", "--size", "64"]
KIND = re.compile(r"^synthetic/parts/(?P<shape>[a-z0-9_]+)/(?P=shape)(-(?P<kind>[a-z]+)-(?P<n>\d{3}))?\.blend$")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The dataset written by the command line, serially."""
    out = tmp_path_factory.mktemp("reference")
    assert main(["generate", "--out", str(out), *CLI_ARGS, "--quiet"]) == 0
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_depth(path: Path) -> np.ndarray:
    import OpenEXR

    with OpenEXR.File(str(path)) as exr:
        channels = exr.channels()
        rgb = channels["RGB"].pixels if "RGB" in channels else np.stack([channels[c].pixels for c in "RGB"], -1)
    return np.asarray(rgb, dtype=np.float32)


def test_same_seed_same_bytes_in_parallel(reference, tmp_path):
    generate_dataset(tmp_path, **ARGS, workers=2, progress=False)
    ours, theirs = _files(tmp_path), _files(reference)
    assert sorted(ours) == sorted(theirs)
    different = [name for name in ours if ours[name] != theirs[name]]
    assert not different, f"files differ between runs: {different[:5]}"
    assert len([n for n in ours if n.endswith(".png")]) > 3 * 4 * 5


def test_kill_mid_scene_then_resume(reference, tmp_path):
    out = tmp_path / "data"
    marker = tmp_path / "marker"
    script = f"""
import sys, time
from pathlib import Path
import oddsparse.data.synth.writer as writer
original = writer._save_exr
def stalled(depth, path):
    original(depth, path)
    if "parts_0001" in str(path) and Path(path).name == "0001.exr":
        Path({str(marker)!r}).write_text("mid-scene")
        time.sleep(300)
writer._save_exr = stalled
writer.generate_dataset({str(out)!r}, **{ARGS!r}, workers=1, progress=False)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert proc.poll() is None, "the generator exited before reaching the stall point"
            assert time.monotonic() < deadline, "the generator never reached scene 1"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    leftovers = sorted(p.name for p in out.iterdir())
    assert "parts_0000" in leftovers and "parts_0001" not in leftovers and "splits.json" not in leftovers
    assert any(name.startswith(".tmp-parts_0001-") for name in leftovers)
    finished = (out / "parts_0000" / "scene3d.metadata.json").stat()

    generate_dataset(out, **ARGS, workers=1, progress=False)
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    again = (out / "parts_0000" / "scene3d.metadata.json").stat()
    assert (again.st_ino, again.st_mtime_ns) == (finished.st_ino, finished.st_mtime_ns), "finished scene redone"
    assert _files(out) == _files(reference)


def test_folder_format_matches_the_published_sample(reference):
    sample = require_sample()
    sample3d = json.loads((sample / "scene3d.metadata.json").read_text())
    sample2d = json.loads((sample / "scene2d.metadata.json").read_text())
    splits = json.loads((reference / "splits.json").read_text())
    assert sorted(splits["train"] + splits["test"]) == ["parts_0000", "parts_0001", "parts_0002"]
    for scene in sorted(p for p in reference.iterdir() if p.is_dir()):
        meta3d = json.loads((scene / "scene3d.metadata.json").read_text())
        meta2d = json.loads((scene / "scene2d.metadata.json").read_text())
        assert list(meta3d) == list(sample3d) and list(meta2d) == list(sample2d)
        assert list(meta3d["camera"]) == list(sample3d["camera"])
        assert "time" not in json.dumps(meta3d["rendering_info"])
        names = [o["name"] for o in meta3d["objects"]]
        assert sorted(p.name for p in (scene / "segmentations").iterdir()) == sorted(names + ["floor_object"])
        for obj in meta3d["objects"]:
            assert list(obj) == list(sample3d["objects"][0])
            matrix = np.array(obj["rotation_matrix"])
            np.testing.assert_allclose(matrix[:3, 3], obj["location"])
            np.testing.assert_allclose(obj["bbox"][0], obj["location"])
            np.testing.assert_allclose(matrix[:3, :3], _yaw(obj["rotation_euler"][2]), atol=1e-12)
        kinds = [KIND.match(p) for p in meta2d["blend_paths"]]
        assert all(kinds), meta2d["blend_paths"]
        assert meta2d["blend_paths"] == [o["path"] for o in meta3d["objects"]]
        anomalous = [m.group("kind") is not None for m in kinds]
        assert meta2d["anomaly_labels"] == [0 if a else 1 for a in anomalous]  # published: 1 = normal
        assert len({m.group("shape") for m in kinds}) == 1
        assert sorted(meta2d["bbox"]) == [f"{v:04d}.png" for v in range(4)]
        for v in range(4):
            stem = f"{v:04d}"
            for kind, reference_file, mode in [("RGB", f"RGB/{stem}.png", "RGBA"),
                                               ("depth_png", f"depth_png/{stem}.png", "I;16"),
                                               ("binary_labels", f"binary_labels/{stem}.png", "L")]:
                with Image.open(scene / reference_file) as image, Image.open(sample / kind / "0000.png") as real:
                    assert image.mode == real.mode == mode and image.size == (64, 64)
            masks = {}
            for name in names + ["floor_object"]:
                with Image.open(scene / "segmentations" / name / f"{name}_{stem}.png") as image:
                    assert image.mode == "RGBA"
                    masks[name] = np.array(image)[..., 0] > 127
            stacked = np.stack(list(masks.values()))
            assert stacked.sum(0).max() <= 1, "masks overlap"
            depth = _read_depth(scene / "depth_exr" / f"{stem}.exr")
            assert depth.shape == (64, 64, 3) and (depth[..., 0] == depth[..., 2]).all()
            hit = depth[..., 0] < 1e9
            np.testing.assert_array_equal(hit, stacked.any(0))  # finite depth exactly where a mask is on
            assert (depth[..., 0][~hit] == 1e10).all()
            union = np.zeros((64, 64), dtype=bool)
            boxes = []
            for name, is_anomalous in zip(names, anomalous):
                if is_anomalous:
                    union |= masks[name]
                    if masks[name].any():
                        rows, cols = np.nonzero(masks[name])
                        boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
            labels = np.array(Image.open(scene / "binary_labels" / f"{stem}.png"))
            np.testing.assert_array_equal(labels, np.where(union, 255, 0))
            assert meta2d["bbox"][f"{stem}.png"] == boxes


def _yaw(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def test_toys_splits_keep_unseen_categories_out_of_training():
    splits = dataset_splits("toys", 60, seed=3)
    assert set(splits["seen_categories"]) | set(splits["unseen_categories"]) == set(TOY_CATEGORIES)
    assert not set(splits["seen_categories"]) & set(splits["unseen_categories"])
    assert splits["unseen_categories"]
    assert not set(splits["train"]) & set(splits["test"])
    assert len(splits["train"]) + len(splits["test"]) == 60
    assert all(name.split("_")[0] in splits["seen_categories"] for name in splits["train"])
    assert sorted(splits["seen"] + splits["unseen"]) == sorted(splits["test"])
    assert all(name.split("_")[0] in splits["unseen_categories"] for name in splits["unseen"])
    assert splits["unseen"] and splits["seen"]
    assert dataset_splits("toys", 60, seed=3) == splits


def test_toys_splits_of_other_categories():
    """--categories: the split's categories are the ones asked, a quarter of them unseen; the default list spelt
    out gives the default split; scene names carry the categories drawn; parts has none to choose."""
    extra = "+" + ",".join(FLAT_TOY_CATEGORIES)
    splits = dataset_splits("toys", 200, seed=0, categories=extra)
    wanted = {*TOY_CATEGORIES, *FLAT_TOY_CATEGORIES}
    assert set(splits["seen_categories"]) | set(splits["unseen_categories"]) == wanted
    assert len(splits["unseen_categories"]) == round(0.25 * len(wanted))
    drawn = {name.split("_")[0] for name in splits["train"] + splits["test"]}
    assert drawn <= wanted and drawn & set(FLAT_TOY_CATEGORIES)
    assert all(name.split("_")[0] in splits["seen_categories"] for name in splits["train"])
    assert dataset_splits("toys", 200, seed=0, categories=list(TOY_CATEGORIES)) == dataset_splits("toys", 200, seed=0)
    two = dataset_splits("toys", 40, seed=0, categories="banana,duck")
    assert {name.split("_")[0] for name in two["train"] + two["test"]} == {"banana", "duck"}
    with pytest.raises(ValueError, match="categories: only the toys family"):
        dataset_splits("parts", 10, seed=0, categories="duck")


def test_scene_of_the_same_category_is_the_same_scene_under_other_lists():
    """A scene's category is drawn by index from the list; the rest of the scene from (seed, index) alone: where
    two lists give a scene the same category, they give the same scene (hand-checked on the first such index)."""
    from oddsparse.data.synth.scene import generate_scene, pick_category

    extra = "+" + ",".join(FLAT_TOY_CATEGORIES)
    assert [pick_category("toys", 0, i, list(TOY_CATEGORIES)) for i in range(30)] == \
        [pick_category("toys", 0, i) for i in range(30)]
    same = next(i for i in range(50) if pick_category("toys", 0, i, extra) == pick_category("toys", 0, i))
    a = generate_scene("toys", seed=0, index=same, objects=(3, 4), views=2, size=32)
    b = generate_scene("toys", seed=0, index=same, objects=(3, 4), views=2, size=32, categories=extra)
    assert a.name == b.name
    assert [o.model.shape_name for o in a.objects] == [o.model.shape_name for o in b.objects]
    for oa, ob in zip(a.objects, b.objects):
        np.testing.assert_array_equal(oa.object_to_world, ob.object_to_world)
    flat = next(i for i in range(50) if pick_category("toys", 0, i, extra) in FLAT_TOY_CATEGORIES)
    spec = generate_scene("toys", seed=0, index=flat, objects=(3, 4), views=2, size=32, categories=extra)
    assert spec.name.split("_")[0] in FLAT_TOY_CATEGORIES
    assert {o.model.shape_name.split("_")[1] for o in spec.objects} == {spec.name.split("_")[0]}
    with pytest.raises(ValueError, match="categories: only the toys family"):
        generate_scene("parts", seed=0, categories="duck")


def test_categories_are_recorded_and_checked(tmp_path):
    """generation.json records a non-default category list (the default is not written, so older folders read
    the same); finishing a folder with another list is refused naming the field."""
    args = dict(family="toys", scenes=2, seed=0, objects=(3, 3), views=2, size=32, progress=False)
    out = tmp_path / "flat"
    assert main(["generate", "--out", str(out), "--family", "toys", "--scenes", "2", "--seed", "0", "--objects",
                 "3-3", "--views", "2", "--size", "32", "--categories", "banana,turtle", "--quiet"]) == 0
    settings = json.loads((out / "generation.json").read_text())
    assert settings["categories"] == ["banana", "turtle"]
    splits = json.loads((out / "splits.json").read_text())
    assert sorted(splits["seen_categories"] + splits["unseen_categories"]) == ["banana", "turtle"]
    assert {p.name.split("_")[0] for p in out.iterdir() if p.is_dir()} <= {"banana", "turtle"}
    with pytest.raises(ValueError, match=r"generation\.json.*categories: \['banana', 'turtle'\] there, None asked"):
        generate_dataset(out, **args)
    default = tmp_path / "default"
    generate_dataset(default, **dict(args, scenes=0), categories=",".join(TOY_CATEGORIES))
    assert "categories" not in json.loads((default / "generation.json").read_text())
    with pytest.raises(ValueError, match=r"generation\.json.*categories: None there, \['duck'\] asked"):
        generate_dataset(default, **args, categories="duck")
    with pytest.raises(ValueError, match="unknown toy category 'gear'"):
        generate_dataset(tmp_path / "bad", **args, categories="gear")


def test_contact_sheet_outlines_anomalies_red_and_normals_green(reference, tmp_path):
    scene = reference / "parts_0000"
    sheet_path = tmp_path / "sheet.png"
    assert main(["show", str(scene), "--out", str(sheet_path), "--columns", "2"]) == 0
    sheet = np.array(Image.open(sheet_path).convert("RGB"))
    meta = json.loads((scene / "scene3d.metadata.json").read_text())
    assert any("-" in Path(o["path"]).stem for o in meta["objects"]), "the reference scene has no anomaly"
    caption = 14
    assert sheet.shape == (caption + 2 * 64, 2 * 64, 3)
    colours = {True: (230, 20, 20), False: (20, 200, 60)}
    for v in range(4):
        tile = sheet[caption + (v // 2) * 64: caption + (v // 2 + 1) * 64, (v % 2) * 64: (v % 2 + 1) * 64]
        original = np.array(Image.open(scene / "RGB" / f"{v:04d}.png").convert("RGB"))
        drawn = np.zeros((64, 64), dtype=bool)
        for obj in meta["objects"]:
            mask = np.array(Image.open(scene / "segmentations" / obj["name"] / f"{obj['name']}_{v:04d}.png"))[..., 0] > 127
            outline = outline_reference(mask)
            assert (tile[outline] == colours["-" in Path(obj["path"]).stem]).all()
            drawn |= outline
        np.testing.assert_array_equal(tile[~drawn], original[~drawn])


def test_show_names_fixable_input_in_one_line(reference, tmp_path, capsys, monkeypatch):
    """Views the scene does not store, no columns, metadata without objects: one line and exit status 2 (a view
    index past the end used to wrap round silently, and the others ended in tracebacks)."""
    import shutil

    monkeypatch.delenv("ODDSPARSE_TRACEBACK", raising=False)
    scene, out = reference / "parts_0000", str(tmp_path / "sheet.png")
    for extra, message in ((["--views", "5"], "views [5] asked, but the scene stores 4 (0..3)"),
                           (["--views", "-1"], "views [-1] asked"),
                           (["--columns", "0"], "columns must be >= 1")):
        assert main(["show", str(scene), "--out", out, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit):  # not integers: argparse's usage error
        main(["show", str(scene), "--out", out, "--views", "a"])
    broken = tmp_path / "broken"
    shutil.copytree(scene, broken)
    (broken / "scene3d.metadata.json").write_text(json.dumps({"camera": {}}))
    assert main(["show", str(broken), "--out", out]) == 2
    assert "field 'objects'" in capsys.readouterr().err


def test_generate_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        main(["generate", "--out", str(tmp_path), "--family", "parts", "--scenes", "1", "--seed", "0",
              "--objects", "5-2"])
    with pytest.raises(ValueError, match="family"):
        generate_dataset(tmp_path, "cars", 1, 0)


def test_finishing_a_dataset_with_other_settings_is_refused(reference, tmp_path, capsys):
    from oddsparse.data.synth import GENERATOR_VERSION

    settings = json.loads((reference / "generation.json").read_text())
    assert settings == {"generator_version": GENERATOR_VERSION, "family": "parts", "seed": 0, "objects": [3, 4],
                        "views": 4, "size": 64, "min_anomaly_pixels": 0}
    out = tmp_path / "data"
    generate_dataset(out, **dict(ARGS, scenes=1), progress=False)
    before = _files(out)
    with pytest.raises(ValueError, match=r"generation\.json.*size: 64 there, 32 asked"):
        generate_dataset(out, **dict(ARGS, size=32), progress=False)
    with pytest.raises(ValueError, match=r"generation\.json.*min_anomaly_pixels: 0 there, 8 asked"):
        generate_dataset(out, **ARGS, min_anomaly_pixels=8, progress=False)
    assert main(["generate", "--out", str(out), *CLI_ARGS[:-4], "--views", "6", "--size", "64", "--quiet"]) == 2
    assert re.search(r"^oddsparse generate: error: .*generation\.json.*views: 4 there, 6 asked\); generate into another folder$",
                     capsys.readouterr().err.strip())
    assert _files(out) == before  # nothing written by a refused call
    fresh = tmp_path / "fresh"
    for wrong in (dict(views=0), dict(size=4), dict(objects=(3, 2))):  # refused before the folder exists: the
        with pytest.raises(ValueError, match="views must be|objects must be"):  # corrected call then works there
            generate_dataset(fresh, **dict(ARGS, scenes=1, **wrong), progress=False)
        assert not fresh.exists()
    generate_dataset(out, **ARGS, progress=False)  # the same settings with more scenes finish the dataset
    assert _files(out) == _files(reference)
    (out / "generation.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"generation\.json: not a readable settings file"):
        generate_dataset(out, **ARGS, progress=False)


def test_environment_background_changes_only_what_lies_beyond_the_floor(reference, tmp_path):
    """--background environment: the same scenes (layout, objects, masks, depth, floor) with a structured
    horizon behind the floor; generation.json records it, and the two kinds are never mixed in one folder."""
    out = tmp_path / "env"
    assert main(["generate", "--out", str(out), *CLI_ARGS, "--background", "environment", "--quiet"]) == 0
    settings = json.loads((out / "generation.json").read_text())
    assert settings == dict(json.loads((reference / "generation.json").read_text()), background="environment")
    gradient, environment = _files(reference), _files(out)
    assert gradient.keys() == environment.keys()
    changed = {name for name in gradient if gradient[name] != environment[name]} - {"generation.json"}
    assert changed and all(n.split("/")[1] in ("RGB", "scene3d.metadata.json") for n in changed), changed
    for name in sorted(n for n in changed if "/RGB/" in n):
        scene, _, view = name.split("/")
        old, new = (np.asarray(Image.open(root / name)) for root in (reference, out))
        depth = _read_depth(reference / scene / "depth_exr" / view.replace(".png", ".exr"))[..., 0]
        beyond = depth >= 1e9  # rays that hit nothing: the background
        assert np.array_equal(old[~beyond], new[~beyond])  # objects and floor: the same pixels
    for scene in {n.split("/")[0] for n in changed}:
        meta = json.loads((out / scene / "scene3d.metadata.json").read_text())
        assert meta["scene"]["background_hdr"] == "synthetic-environment"
    with pytest.raises(ValueError, match=r"generation\.json.*background: 'environment' there, 'gradient' asked"):
        generate_dataset(out, **ARGS, progress=False)
    with pytest.raises(ValueError, match=r"generation\.json.*background: 'gradient' there, 'environment' asked"):
        generate_dataset(reference, **ARGS, background="environment", progress=False)
    with pytest.raises(ValueError, match="background must be one of"):
        generate_dataset(tmp_path / "x", **ARGS, background="hdri", progress=False)


def test_environment_colour_by_hand():
    from oddsparse.data.synth.render import EnvironmentSpec, environment_color

    colors = ((0.2, 0.4, 0.1), (0.5, 0.3, 0.2), (0.1, 0.1, 0.6))
    env = EnvironmentSpec(seed=3, height=np.radians(15.0), colors=colors, detail=12.0)
    azimuths = np.linspace(-np.pi, np.pi, 64, endpoint=False)
    up = np.tile([[0.0, 0.0, 1.0]], (4, 1))  # above any skyline: the sky colour given
    level = np.stack([np.cos(azimuths), np.sin(azimuths), np.full_like(azimuths, np.sin(np.radians(-1.0)))], 1)
    level /= np.linalg.norm(level, axis=1, keepdims=True)  # just below the horizon: under every skyline
    sky = np.full((4, 3), 0.7, dtype=np.float32)
    assert np.array_equal(environment_color(env, up, sky), sky)
    clutter = environment_color(env, level, np.full((64, 3), 0.7, dtype=np.float32))
    palette = np.asarray(colors)
    assert (clutter >= palette.min(0) * 0.65 - 1e-6).all() and (clutter <= palette.max(0) * 1.15 + 1e-6).all()
    assert clutter.std(0).max() > 0.02  # structured, not one flat colour
    # seamless at the back (azimuth -pi and +pi are the same direction): the clutter's noise is continuous there,
    # so two rays either side of it differ at most by their streak columns, one brightness factor for all channels
    # (the column boundary at the back falls either side of them by float32 rounding, as numpy versions round)
    back = np.array([[-1.0, 1e-7, -0.02], [-1.0, -1e-7, -0.02]])
    back /= np.linalg.norm(back, axis=1, keepdims=True)
    pair = environment_color(env, back, np.zeros((2, 3), dtype=np.float32))
    ratio = pair[0] / pair[1]
    assert np.allclose(ratio, ratio[0], rtol=1e-4) and 0.65 / 1.15 <= ratio[0] <= 1.15 / 0.65
