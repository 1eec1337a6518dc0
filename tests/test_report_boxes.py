"""recipes/report_boxes.py: one-to-one best IoUs against brute force, the GT-part oracles, the CLI end to end."""
import itertools
import json
import math

import numpy as np
import pytest
import torch

from oddsparse.geometry.boxes import YawBoxes, box_iou_3d
from reference_eval import SCENE_KWARGS, save_tiny_checkpoint, tiny_dataset
from recipe_loader import load_recipe


def _random_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    return YawBoxes(torch.rand(n, 3, generator=g) * 0.3, 0.1 + 0.2 * torch.rand(n, 3, generator=g),
                    (torch.rand(n, generator=g) - 0.5) * math.pi)


def test_best_ious_equal_the_brute_force_assignment():
    report = load_recipe("report_boxes")
    for seed, (g, p) in enumerate([(3, 4), (4, 2), (3, 3)]):
        gt, boxes = _random_boxes(g, seed), _random_boxes(p, 100 + seed)
        iou = box_iou_3d(gt, boxes).numpy()
        best_total, best = -1.0, None
        for columns in itertools.permutations(range(p), min(g, p)):  # every one-to-one assignment
            for rows in itertools.combinations(range(g), min(g, p)):
                total = sum(iou[r, c] for r, c in zip(rows, columns))
                if total > best_total + 1e-12:
                    best_total, best = total, dict(zip(rows, columns))
        expected = np.array([iou[r, best[r]] if r in best else 0.0 for r in range(g)])
        got = report.best_ious(gt, boxes)
        assert got.sum() == pytest.approx(expected.sum(), abs=1e-6)
        # each GT box's own IoU (recall by height, category and type pair them with their GT boxes)
        np.testing.assert_allclose(got, expected, atol=1e-6)
        assert len(set(np.round(expected, 6))) > 1  # not one value repeated: an order error would show
    assert report.best_ious(gt, YawBoxes(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0))).tolist() == [0.0] * g


def test_gt_part_oracles_by_hand():
    report = load_recipe("report_boxes")
    gt = YawBoxes(torch.tensor([[0.0, 0.0, 0.05]]), torch.tensor([[0.3, 0.2, 0.1]]), torch.tensor([0.0]))
    # a proposal 1.5x too tall (resting on the floor), 10% too long, shifted 1 cm and half-turned (the same frame)
    proposal = YawBoxes(torch.tensor([[0.01, 0.0, 0.075]]), torch.tensor([[0.33, 0.2, 0.15]]),
                        torch.tensor([math.pi + 0.01]))
    height = report.with_gt_part(proposal, gt, "height")
    assert torch.allclose(height.size, torch.tensor([[0.33, 0.2, 0.1]]))
    assert torch.allclose(height.center[:, 2], torch.tensor([0.05]))  # the bottom stays on the floor
    size = report.with_gt_part(proposal, gt, "size")
    assert torch.allclose(size.size, torch.tensor([[0.3, 0.2, 0.1]])) and torch.allclose(size.center[:, 2],
                                                                                       torch.tensor([0.05]))
    # left: only the 1 cm shift along x and the 0.01 rad turn
    assert float(box_iou_3d(size, gt)[0, 0]) > 0.9
    assert float(box_iou_3d(proposal, gt)[0, 0]) == pytest.approx(0.6, abs=0.01)  # ~(0.06 * 0.1) / (0.33 * 0.2 * 0.15)


def test_recall_by_height_by_hand():
    report = load_recipe("report_boxes")
    ious = np.array([0.9, 0.4, 0.6, 0.2, 0.7])
    heights = np.array([0.02, 0.018, 0.04, 0.10, 0.30])
    bins = report.recall_by_height(ious, heights)
    assert list(bins) == ["0-0.03", "0.03-0.05", "0.05-0.08", ">=0.08"]
    assert bins["0-0.03"] == {"objects": 2, "recall@0.5": 0.5}
    assert bins["0.03-0.05"] == {"objects": 1, "recall@0.5": 1.0}
    assert bins["0.05-0.08"] == {"objects": 0, "recall@0.5": None}
    assert bins[">=0.08"] == {"objects": 2, "recall@0.5": 0.5}


def test_recall_by_category_by_hand():
    report = load_recipe("report_boxes")
    ious = np.array([0.9, 0.4, 0.6, 0.2, 0.7])
    cats = report.recall_by_category(ious, ["lamp", "lamp", "car", "lamp", "car"])
    assert cats == {"car": {"objects": 2, "recall@0.5": 1.0}, "lamp": {"objects": 3, "recall@0.5": pytest.approx(1 / 3)}}


def test_objectness_drops_by_hand():
    """Lost to objectness: found by a proposal (IoU > 0.25), that proposal dropped, and no final box."""
    report = load_recipe("report_boxes")
    unit = torch.tensor([[1.0, 1.0, 1.0]])
    gt = YawBoxes(torch.tensor([[0.0, 0.0, 0.5], [5.0, 0.0, 0.5], [10.0, 0.0, 0.5]]), unit.repeat(3, 1), torch.zeros(3))
    # proposal 0 on GT 0 (kept), 1 on GT 1 shifted by 0.2 (IoU 0.8 / 1.2 = 2/3, dropped), none near GT 2,
    # 2 on GT 2 shifted by 0.9 (IoU 0.1 / 1.9, below 0.25: not found), 3 a ghost far away (dropped)
    proposals = YawBoxes(torch.tensor([[0.0, 0.0, 0.5], [5.2, 0.0, 0.5], [10.9, 0.0, 0.5], [20.0, 0.0, 0.5]]),
                         unit.repeat(4, 1), torch.zeros(4))
    kept = np.array([True, False, False, False])
    final_ious = np.array([1.0, 0.0, 0.0])
    assert report.objectness_drops(gt, proposals, kept, final_ious).tolist() == [False, True, False]
    # a final box that matches GT 1 anyway: not lost
    assert report.objectness_drops(gt, proposals, kept, np.array([1.0, 0.6, 0.0])).tolist() == [False, False, False]
    # kept proposals lose nothing; no proposals lose nothing
    assert not report.objectness_drops(gt, proposals, np.ones(4, dtype=bool), final_ious).any()
    empty = YawBoxes(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0))
    assert report.objectness_drops(gt, empty, np.zeros(0, dtype=bool), final_ious).tolist() == [False] * 3


def test_head_ablations_by_hand():
    """Each ablation moves the kept proposals by its delta components only."""
    report = load_recipe("report_boxes")
    proposals = YawBoxes(torch.tensor([[0.0, 0.0, 0.5], [2.0, 0.0, 0.5]]), torch.tensor([[2.0, 1.0, 1.0]] * 2),
                         torch.zeros(2))
    deltas = torch.tensor([[0.25, 0.0, 0.0, math.log(1.5), 0.0, 0.0, 0.1]] * 2)
    out = report.head_ablations(proposals, deltas, torch.tensor([True, False]))
    assert all(b.center.shape[0] == 1 for b in out.values())  # the second proposal's objectness drops it
    torch.testing.assert_close(out["head_objectness_only"].center, torch.tensor([[0.0, 0.0, 0.5]]))
    torch.testing.assert_close(out["head_objectness_only"].size, torch.tensor([[2.0, 1.0, 1.0]]))
    # centre moves by 0.25 of the size along the box's x; yaw 0.1; size unchanged
    moved = out["head_without_size"]
    torch.testing.assert_close(moved.center, torch.tensor([[0.5, 0.0, 0.5]]))
    torch.testing.assert_close(moved.size, torch.tensor([[2.0, 1.0, 1.0]]))
    torch.testing.assert_close(moved.yaw, torch.tensor([0.1]))
    grown = out["head_size_only"]  # x grows by 1.5: 3 x 1 x 1, centre and yaw kept
    torch.testing.assert_close(grown.center, torch.tensor([[0.0, 0.0, 0.5]]))
    torch.testing.assert_close(grown.size, torch.tensor([[3.0, 1.0, 1.0]]))
    torch.testing.assert_close(grown.yaw, torch.tensor([0.0]))


def test_size_changes_by_hand():
    """Footprint sqrt(x*y) and height ratios: the head's (refined / proposal) and the needed (GT / proposal)."""
    report = load_recipe("report_boxes")
    proposals = YawBoxes(torch.tensor([[0.0, 0.0, 0.5], [5.0, 0.0, 0.5]]), torch.tensor([[1.0, 1.0, 1.0]] * 2),
                         torch.zeros(2))
    refined = YawBoxes(proposals.center, torch.tensor([[2.0, 2.0, 0.5], [1.0, 4.0, 1.0]]), torch.zeros(2))
    gt = YawBoxes(torch.tensor([[0.0, 0.0, 0.6]]), torch.tensor([[1.0, 1.0, 1.2]]), torch.zeros(1))
    rows = report.size_changes(proposals, refined, gt)
    np.testing.assert_allclose(rows[0], [2.0, 0.5, 1.0, 1.2], rtol=1e-6)
    np.testing.assert_allclose(rows[1, :2], [2.0, 1.0], rtol=1e-6)  # sqrt(1 * 4)
    assert np.isnan(rows[1, 2:]).all()  # no GT box near the second proposal
    summary = report.size_changes_by_category(np.concatenate([rows, rows]), ["duck", "duck", "car", "car"])
    assert summary["duck"] == summary["car"] == {"proposals": 1, "head_footprint": pytest.approx(2.0),
                                                 "head_height": pytest.approx(0.5), "needed_footprint": pytest.approx(1.0),
                                                 "needed_height": pytest.approx(1.2)}
    assert report.size_changes_by_category(rows[1:], ["car"])["car"]["head_footprint"] is None


def test_cli_writes_the_report_and_figures(tmp_path_factory, tmp_path, capsys, monkeypatch):
    from oddsparse.models.detector import build_detector
    from reference_eval import DETECTOR_KWARGS

    report = load_recipe("report_boxes")
    root = tiny_dataset(tmp_path_factory.getbasetemp())
    torch.manual_seed(0)
    kwargs = dict(DETECTOR_KWARGS, box_head=True, box_head_resolution=4, box_head_channels=8)
    detector = build_detector(SCENE_KWARGS, kwargs)
    with torch.no_grad():  # biased as reference_eval.tiny_detector: it carves and finds boxes
        detector.scene_model.foreground.layers[-1].bias.fill_(6.0)
        detector.scene_model.fields.density[-1].bias.fill_(10.0)
    path = save_tiny_checkpoint(tmp_path / "d.pt", root, detector.eval(), detector_kwargs=kwargs)
    out = tmp_path / "report"
    result = report.main(["--checkpoint", str(path), "--out", str(out), "--data", str(root), "--split", "all",
                          "--views", "3", "--scenes", "2", "--figure-scenes", "2", "--no-box-consensus"])
    saved = json.loads((out / "boxes.json").read_text())
    assert saved["scenes"] == 2 and saved["gt_objects"] > 0 and saved == json.loads(json.dumps(result))
    summary = saved["summary"]
    assert set(summary) == {"proposals", "proposals_gt_height", "proposals_gt_size", "refined", "final",
                            "head_objectness_only", "head_without_size", "head_size_only"}
    assert all(summary[name] == summary["proposals"] for name in report.HEAD_ABLATIONS)  # a fresh head: no move
    changes = saved["head_size_changes_by_category"]["parts"]
    assert set(changes) == {"proposals", "head_footprint", "head_height", "needed_footprint", "needed_height"}
    # a fresh box head changes no box and keeps all (objectness 1/2 at the threshold 1/2); without
    # consensus the reported boxes are the refined ones
    assert summary["refined"] == summary["proposals"] and summary["final"] == summary["refined"]
    assert saved["box_consensus"] is False
    for name, bins in saved["recall_by_height"].items():
        assert sum(b["objects"] for b in bins.values()) == saved["gt_objects"]
    for name, cats in saved["recall_by_category"].items():
        assert sum(c["objects"] for c in cats.values()) == saved["gt_objects"]
        assert list(cats) == ["parts"]  # the generated parts scenes: parts_0000, parts_0001
    from oddsparse.data.scene_io import read_scene_metadata

    folders = sorted(f for f in root.iterdir() if f.is_dir())[:2]  # the report's two scenes (split "all")
    expected = sorted(t or "normal" for f in folders for t in read_scene_metadata(f).anomaly_types)
    for name, groups in saved["recall_by_type"].items():  # every GT object once, under its own type
        assert sorted(t for t, g in groups.items() for _ in range(g["objects"])) == expected
        matched = sum(round(g["recall@0.5"] * g["objects"]) for g in groups.values())
        assert matched == round(summary[name]["recall@0.5"] * saved["gt_objects"])
    drops = saved["dropped_by_objectness_by_type"]  # a fresh head keeps every proposal (objectness 1/2)
    assert sum(v["objects"] for v in drops.values()) == saved["gt_objects"]
    assert all(v["dropped"] == 0 for v in drops.values())
    assert saved["merge_floating"] == 0.0
    with pytest.raises(SystemExit):  # refused before the checkpoint is read
        report.main(["--checkpoint", str(tmp_path / "absent.pt"), "--out", str(out), "--merge-floating", "-1"])
    assert "argument --merge-floating: must be >= 0, got -1" in capsys.readouterr().err
    for name in ("boxes_bev.png", "boxes_iou.png"):
        assert (out / name).stat().st_size > 1000
    # --figure-scenes 0: the same report, no bird's-eye figure (it used to fail in matplotlib with 0 rows)
    bare = tmp_path / "bare"
    again = report.main(["--checkpoint", str(path), "--out", str(bare), "--data", str(root), "--split", "all",
                         "--views", "3", "--scenes", "2", "--figure-scenes", "0", "--no-box-consensus"])
    assert again["summary"] == result["summary"]
    assert not (bare / "boxes_bev.png").exists() and (bare / "boxes_iou.png").stat().st_size > 1000
    with pytest.raises(SystemExit):
        report.main(["--checkpoint", str(path), "--out", str(bare), "--figure-scenes", "-1"])
    assert "argument --figure-scenes: must be >= 0, got -1" in capsys.readouterr().err
    # --box-source observed: the scenes are read with the GT boxes fitted to the views (recorded)
    sources, read = [], report.read_scene_with_boxes

    def spy(folder, views, image_size, box_source="metadata"):
        sources.append(box_source)
        return read(folder, views, image_size, box_source)

    monkeypatch.setattr(report, "read_scene_with_boxes", spy)
    observed = report.main(["--checkpoint", str(path), "--out", str(tmp_path / "observed"), "--data", str(root),
                            "--split", "all", "--views", "3", "--scenes", "2", "--figure-scenes", "0",
                            "--no-box-consensus", "--box-source", "observed"])
    assert sources == ["observed", "observed"] and observed["box_source"] == "observed"
    assert result["box_source"] == "metadata" and observed["gt_objects"] == result["gt_objects"]
