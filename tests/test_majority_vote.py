"""Majority-vote experiment (paper Fig. 6): the group-scene generator hook and recipes/majority_vote.py."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from oddsparse.data.scene_io import read_scene
from oddsparse.data.synth.scene import generate_group_scene
from oddsparse.data.synth.writer import blend_path, render_and_write_scene
from oddsparse.geometry.grid import VoxelGrid
from oddsparse.models.detector import build_detector
from oddsparse.utils.checkpoint import save_checkpoint
from recipe_loader import load_recipe

SIZE, VIEWS = 32, 5


@pytest.fixture(scope="module")
def specs():
    return {n_a: generate_group_scene("parts", seed=3, index=2, counts=(n_a, 6 - n_a), views=VIEWS, size=SIZE)
            for n_a in range(1, 6)}


@pytest.mark.parametrize("n_a", [1, 2, 3, 4, 5])
def test_group_scene_counts_and_minority_labels(specs, n_a):
    spec = specs[n_a]
    n_b = 6 - n_a
    assert len(spec.objects) == 6 and spec.name == f"parts_0002_a{n_a}b{n_b}"
    models = [o.model for o in spec.objects]
    # the first n_A objects share one model (A), the rest another (B): one model per group
    assert all(m is models[0] for m in models[:n_a]) and all(m is models[-1] for m in models[n_a:])
    assert models[0] is not models[-1]
    marked_group = "A" if n_a < n_b else "B"  # the tie (3, 3) marks B
    expected = [(i < n_a) == (marked_group == "A") for i in range(6)]
    assert [o.is_anomalous for o in spec.objects] == expected
    for obj, marked in zip(spec.objects, expected):
        path = blend_path(spec, obj)
        assert ("-diff-001.blend" in path) == marked, path
        assert (obj.kind == "diff") == marked and (len(obj.region_points) > 0) == marked
    assert sum(expected) == min(n_a, n_b) if n_a != n_b else sum(expected) == n_b


def test_group_scene_same_pair_across_counts_and_deterministic(specs):
    shapes = set()
    for n_a, spec in specs.items():
        a, b = spec.objects[0].model, spec.objects[-1].model
        shapes.add((a.mesh().vertices.tobytes(), b.mesh().vertices.tobytes()))
    assert len(shapes) == 1, "scenes of one index must show the same A/B pair at every count"
    (a_vertices, b_vertices), = shapes
    assert a_vertices != b_vertices, "B must differ from A"
    again = generate_group_scene("parts", seed=3, index=2, counts=(2, 4), views=VIEWS, size=SIZE)
    assert np.array_equal(again.world_to_cam, specs[2].world_to_cam)
    assert all(np.array_equal(x.object_to_world, y.object_to_world) for x, y in zip(again.objects, specs[2].objects))
    other = generate_group_scene("parts", seed=4, index=2, counts=(2, 4), views=VIEWS, size=SIZE)
    assert not np.array_equal(other.world_to_cam, specs[2].world_to_cam)
    with pytest.raises(ValueError, match="counts"):
        generate_group_scene("parts", seed=3, index=2, counts=(0, 6))


def test_group_scene_written_labels_mark_minority(specs, tmp_path):
    spec = specs[4]  # A = 4 copies, B = 2: B is the anomaly
    render_and_write_scene(spec, tmp_path / spec.name)
    scene = read_scene(tmp_path / spec.name)
    assert scene.labels.tolist() == [0, 0, 0, 0, 1, 1]
    assert scene.anomaly_types[4:] == ["diff", "diff"]
    assert scene.images.shape == (VIEWS, SIZE, SIZE, 3)


def test_score_objects_gives_each_gt_object_the_score_of_the_box_matching_it(monkeypatch):
    """Estimated boxes: the detector's boxes (a shuffled copy of four of the five GT boxes and one far away) matched
    to the GT boxes; each GT object takes its matching box's score, the one left out NaN (by hand)."""
    from types import SimpleNamespace

    from oddsparse.geometry.boxes import YawBoxes
    from oddsparse.structures import Boxes

    recipe = load_recipe("majority_vote")
    centers = torch.tensor([[0.0, 0.0, 0.1], [0.5, 0.0, 0.1], [1.0, 0.0, 0.1], [0.0, 0.5, 0.1], [0.5, 0.5, 0.1]])
    scene = SimpleNamespace(boxes=Boxes(centers, torch.full((5, 3), 0.2), torch.eye(3).repeat(5, 1, 1)),
                            images=None, K=None, world_to_cam=None)
    order = [3, 0, 4, 1]  # GT object 2 gets no box
    boxes = YawBoxes(torch.cat([centers[order], torch.tensor([[9.0, 9.0, 0.1]])]), torch.full((5, 3), 0.2),
                     torch.zeros(5))
    scores = torch.tensor([0.9, 0.1, 0.7, 0.3, 0.5])
    monkeypatch.setattr(recipe, "detect_scene", lambda *args: (boxes, scores))
    got = recipe.score_objects(None, scene)
    np.testing.assert_allclose(got, [0.1, 0.3, np.nan, 0.9, 0.7])


def test_summarize_against_hand_computed_rows():
    recipe = load_recipe("majority_vote")
    nan = math.nan
    rows = [  # n_A = 1: A minority; A higher in one scene, lower in the other
        {"n_A": 1, "n_B": 5, "score_A": 0.9, "score_B": 0.2, "missed": 0},
        {"n_A": 1, "n_B": 5, "score_A": 0.1, "score_B": 0.3, "missed": 1},
        # n_A = 3: tie, B higher once, equal once (counts 0.5), one scene without B scores (left out)
        {"n_A": 3, "n_B": 3, "score_A": 0.2, "score_B": 0.6, "missed": 0},
        {"n_A": 3, "n_B": 3, "score_A": 0.4, "score_B": 0.4, "missed": 0},
        {"n_A": 3, "n_B": 3, "score_A": 0.5, "score_B": nan, "missed": 3},
        # n_A = 5: B minority and higher once; equal up to float rounding once (counts 0.5)
        {"n_A": 5, "n_B": 1, "score_A": 0.3, "score_B": 0.8, "missed": 0},
        {"n_A": 5, "n_B": 1, "score_A": 0.3, "score_B": 0.3 + 1e-9, "missed": 0},
    ]
    summary = recipe.summarize(rows)
    one, tie, five = (summary["per_count"][k] for k in ("1", "3", "5"))
    assert one["minority"] == "A" and one["minority_higher_fraction"] == 0.5
    assert one["mean_score_A"] == pytest.approx(0.5) and one["mean_score_B"] == pytest.approx(0.25)
    assert one["std_score_A"] == pytest.approx(0.4) and one["missed_objects"] == 1
    assert tie["minority"] == "tie" and tie["B_higher_fraction"] == pytest.approx(0.75)
    assert tie["scenes"] == 3 and tie["scenes_scored"] == 2 and "minority_higher_fraction" not in tie
    assert tie["mean_score_A"] == pytest.approx((0.2 + 0.4 + 0.5) / 3)
    # the band around a mean spans the scenes that mean averages (the scene without B scores included)
    assert tie["std_score_A"] == pytest.approx(np.std([0.2, 0.4, 0.5]))
    assert tie["std_score_B"] == pytest.approx(0.1)
    assert five["minority"] == "B" and five["minority_higher_fraction"] == 0.75
    assert math.isnan(summary["per_count"]["2"]["mean_score_A"]) and summary["per_count"]["2"]["scenes"] == 0
    assert summary["minority_higher_fraction"] == pytest.approx(2.5 / 4)  # n_A = 3 left out: (1 + 0 + 1 + 0.5) / 4
    assert summary["scenes_decided"] == 4 and summary["tie"] is tie


def _tiny_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    grid = VoxelGrid.centered(shape=(40, 40, 16), voxel_size=0.05)
    scene_kwargs = dict(grid=dict(shape=list(grid.shape), voxel_size=grid.voxel_size, origin=list(grid.origin)),
                        encoder_depth=18, feature_channels=8, backbone_channels=[8, 16, 16, 16], feature_dim=16)
    detector_kwargs = dict(variant="full", heads=2, blocks=1, dim=16, k=4)
    detector = build_detector(scene_kwargs, detector_kwargs)
    save_checkpoint(path, dict(config={}, scene_kwargs=scene_kwargs, detector_kwargs=detector_kwargs,
                               model=detector.state_dict(), stage=2, step=0, family="parts",
                               image_size=[SIZE, SIZE]))
    return path


def test_majority_vote_script_end_to_end(tmp_path, capsys):
    recipe = load_recipe("majority_vote")
    checkpoint = _tiny_checkpoint(tmp_path / "tiny.pt")
    common = ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "mv"), "--scenes-per-count", "1",
              "--views", str(VIEWS), "--input-views", "5", "--seed", "1", "--quiet", "--threads", "1"]
    results = recipe.main(common + ["--gt-boxes"])
    written = json.loads((tmp_path / "mv" / "results.json").read_text())
    assert written["settings"]["gt_boxes"] and written["settings"]["size"] == SIZE
    assert sorted(written["per_count"]) == ["1", "2", "3", "4", "5"]
    assert len(written["per_scene"]) == 5
    for row in written["per_scene"]:
        groups = row["groups"]
        assert groups.count("A") == row["n_A"] and groups.count("B") == row["n_B"] == 6 - row["n_A"]
        assert len(row["scores"]) == 6 and all(s is not None and 0.0 <= s <= 1.0 for s in row["scores"])
        a = np.mean([s for s, g in zip(row["scores"], groups) if g == "A"])
        assert row["score_A"] == pytest.approx(a)
    assert results["scenes_decided"] == 4
    assert (tmp_path / "mv" / "majority_vote.png").stat().st_size > 1000
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("minority_higher_fraction=") and "scenes=5" in last

    # the estimated-box path reuses the cached scenes; an unmatched object has no score (null in JSON)
    scenes = sorted(p.name for p in (tmp_path / "mv" / "scenes").rglob("*_a*b*"))
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "mv" / "scenes").rglob("scene3d.metadata.json")}
    recipe.main(common)
    assert sorted(p.name for p in (tmp_path / "mv" / "scenes").rglob("*_a*b*")) == scenes
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    again = json.loads((tmp_path / "mv" / "results.json").read_text())
    assert not again["settings"]["gt_boxes"]
    for row in again["per_scene"]:
        assert row["missed"] == sum(s is None for s in row["scores"])
