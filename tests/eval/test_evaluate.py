"""Detector evaluation: view selection, report values against hand-computed ones, the eval CLI."""
import json
from itertools import product

import numpy as np
import pytest
import torch
from PIL import Image

from oddsparse.data.scene_io import read_scene_metadata
from oddsparse.eval.evaluate import evaluate_detector, evenly_spaced_views, roc_curve_points
from reference_eval import TINY_SIZE, TINY_VIEWS, OracleDetector, save_tiny_checkpoint, tiny_dataset


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.getbasetemp())


def _scenes(root):
    folders = sorted(p for p in root.iterdir() if (p / "scene3d.metadata.json").is_file())
    return {p.name: read_scene_metadata(p) for p in folders}


def test_evenly_spaced_views():
    assert evenly_spaced_views(20, 5) == [0, 4, 8, 12, 16]
    assert evenly_spaced_views(20, 3) == [0, 6, 13]
    assert evenly_spaced_views(20, 20) == list(range(20))
    assert evenly_spaced_views(6, 1) == [0]
    with pytest.raises(ValueError, match="cannot pick 7 views among 6"):
        evenly_spaced_views(6, 7)


def test_roc_curve_points_by_hand():
    curve = roc_curve_points(np.array([0.9, 0.8, 0.3, 0.1]), np.array([True, False, True, False]))
    # thresholds 0.9, 0.8, 0.3, 0.1: (fpr, tpr) = (0, .5), (.5, .5), (.5, 1), (1, 1)
    assert curve["fpr"] == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert curve["tpr"] == [0.0, 0.5, 0.5, 1.0, 1.0]


def _pairwise_auroc(scores, labels):
    """Naive AUROC: fraction of (anomaly, normal) pairs ordered correctly, ties count 1/2."""
    pairs = [(1.0 if a > n else 0.5 if a == n else 0.0)
             for (a, la), (n, ln) in product(zip(scores, labels), repeat=2) if la and not ln]
    return sum(pairs) / len(pairs)


def test_oracle_report_matches_hand_computed(tiny_root):
    """Every group of the report, the headline (the primary number of views) and each scene's row against
    values computed by hand; the oracle's scores turn over below the primary number of views, so a group
    read from another number of views cannot pass for it."""
    metas = _scenes(tiny_root)
    names = sorted(metas)
    perfect, flipped = names[0], names[1]
    labels = {n: torch.tensor([1.0 if t else 0.0 for t in metas[n].anomaly_types]) for n in names}
    scores = {perfect: 0.1 + 0.8 * labels[perfect], flipped: 0.9 - 0.8 * labels[flipped]}
    dropped = 0  # the perfect scene loses its first GT object: a miss counts as wrong
    oracle = OracleDetector({n: (metas[n].world_to_cam[0], metas[n].boxes, scores[n]) for n in names},
                            drop={perfect: (dropped,)}, flip_below=TINY_VIEWS)
    report = evaluate_detector(oracle, tiny_root, "all", views=(1, 3, TINY_VIEWS), progress=False)

    # every call saw the evenly spaced views of its scene
    seen = sorted((name, count) for name, count, _ in oracle.calls)
    assert seen == sorted((n, c) for n in names for c in (1, 3, TINY_VIEWS))
    for name, count, cameras in oracle.calls:
        assert torch.allclose(cameras, metas[name].world_to_cam[evenly_spaced_views(TINY_VIEWS, count)])

    def expected(turned: bool) -> dict:
        """Hand-computed metrics, scores as given (``turned``: 1 - score, below the primary views)."""
        per_scene = {}
        for name in names:
            scene_labels = labels[name].bool().tolist()
            scene_scores = [1.0 - s if turned else s for s in scores[name].tolist()]
            # a missed object gets the worst score of its class and counts as wrong; 0.5 is the threshold
            correct = [(s >= 0.5) == l for s, l in zip(scene_scores, scene_labels)]
            if name == perfect:
                scene_scores[dropped] = 0.0 if scene_labels[dropped] else 1.0
                correct[dropped] = False
            per_scene[name] = (scene_scores, scene_labels, correct)
        rows = list(per_scene.values())
        return {"object_accuracy": np.mean([np.mean(c) for _, _, c in rows]),
                "object_AUROC": np.mean([_pairwise_auroc(s, l) for s, l, _ in rows]),
                "object_accuracy_pooled": np.mean([x for _, _, c in rows for x in c]),
                "object_AUROC_pooled": _pairwise_auroc([x for s, _, _ in rows for x in s],
                                                       [x for _, l, _ in rows for x in l]),
                "per_scene": {n: (_pairwise_auroc(s, l), np.mean(c)) for n, (s, l, c) in per_scene.items()}}

    primary, fewer = expected(False), expected(True)
    assert all(primary[k] != pytest.approx(fewer[k]) for k in ("object_AUROC", "object_accuracy"))  # the test can tell
    for group, want in [(report, primary), (report["per_num_views"][str(TINY_VIEWS)], primary),
                        (report["per_num_views"]["1"], fewer), (report["per_num_views"]["3"], fewer)]:
        for key in ("object_accuracy", "object_AUROC", "object_accuracy_pooled", "object_AUROC_pooled"):
            assert group[key] == pytest.approx(want[key]), key
        assert group["num_missed"] == 1
    for row in report["per_scene"]:  # what `oddsparse compare` bootstraps
        want = (primary if row["num_views"] == TINY_VIEWS else fewer)["per_scene"][row["name"]]
        assert (row["object_AUROC"], row["object_accuracy"]) == pytest.approx(want), row["name"]
    assert report["primary_views"] == TINY_VIEWS
    assert set(report["per_object_count"]) == {"3-4"}
    assert set(report["per_type"]) == {t for n in names for t in metas[n].anomaly_types if t}
    assert list(report["roc"]) == ["1", "3", str(TINY_VIEWS)]
    assert len(report["per_scene"]) == 2 * 3


@pytest.mark.parametrize("keys", [("seen", "unseen"), ("test_seen", "test_unseen")])
def test_report_breaks_down_by_seen_and_unseen_splits(tiny_root, tmp_path, keys):
    """per_split holds each subset's metrics, computed from its scenes alone (older split names read too)."""
    import shutil

    metas = _scenes(tiny_root)
    seen_name, unseen_name = sorted(metas)
    root = tmp_path / "root"
    for name in metas:
        shutil.copytree(tiny_root / name, root / name)
    (root / "splits.json").write_text(json.dumps({"train": [], "test": [seen_name, unseen_name],
                                                  keys[0]: [seen_name], keys[1]: [unseen_name]}))
    labels = {n: torch.tensor([1.0 if t else 0.0 for t in metas[n].anomaly_types]) for n in metas}
    scores = {seen_name: 0.1 + 0.8 * labels[seen_name], unseen_name: 0.9 - 0.8 * labels[unseen_name]}
    oracle = OracleDetector({n: (metas[n].world_to_cam[0], metas[n].boxes, scores[n]) for n in metas})
    report = evaluate_detector(oracle, root, "test", views=(TINY_VIEWS,), progress=False)
    assert set(report["per_split"]) == {"seen", "unseen"}
    seen, unseen = report["per_split"]["seen"], report["per_split"]["unseen"]
    assert seen["num_scenes"] == unseen["num_scenes"] == 1
    assert seen["object_AUROC"] == pytest.approx(1.0) and seen["object_accuracy"] == pytest.approx(1.0)
    assert unseen["object_AUROC"] == pytest.approx(0.0) and unseen["object_accuracy"] == pytest.approx(0.0)
    assert report["object_AUROC"] == pytest.approx(0.5)
    # evaluating a subset itself: not broken down by itself, nor by a subset none of its scenes is in
    assert evaluate_detector(oracle, root, "seen", views=(TINY_VIEWS,), progress=False)["per_split"] == {}


def test_scenes_with_too_few_views_are_skipped(tiny_root):
    metas = _scenes(tiny_root)
    oracle = OracleDetector({n: (m.world_to_cam[0], m.boxes, torch.full((len(m.object_names),), 0.5))
                             for n, m in metas.items()})
    report = evaluate_detector(oracle, tiny_root, "all", views=(2, TINY_VIEWS + 1), primary_views=2, progress=False)
    assert list(report["per_num_views"]) == ["2"]
    assert sorted(s["name"] for s in report["skipped"]) == sorted(metas)
    assert all(s["num_views"] == TINY_VIEWS + 1 for s in report["skipped"])


def test_eval_cli_writes_report_and_figures(tiny_root, tmp_path, capsys):
    from oddsparse.cli import main

    checkpoint = save_tiny_checkpoint(tmp_path / "final.pt", tiny_root)
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(checkpoint), "--split", "all", "--views", f"1,{TINY_VIEWS}",
                 "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    for key in ("object_AUROC", "object_accuracy", "object_AUROC_pooled", "object_accuracy_pooled",
                "per_type", "per_object_count", "per_num_views"):
        assert key in report
    assert report["object_accuracy"] is not None and 0.0 <= report["object_accuracy"] <= 1.0
    assert list(report["per_num_views"]) == ["1", str(TINY_VIEWS)]
    assert report["settings"]["image_size"] == [TINY_SIZE, TINY_SIZE]  # from the checkpoint
    assert report["settings"]["root"] == str(tiny_root.resolve())  # default data root: the checkpoint's
    assert report["num_scenes"] == 2 and report["num_objects"] == sum(s["num_objects"] for s in report["per_scene"]) / 2
    for name in ("roc", "per_type_accuracy", "auroc_vs_views", "auroc_vs_object_count"):
        with Image.open(out / f"{name}.png") as image:
            assert image.format == "PNG" and min(image.size) > 100
    assert "object_AUROC=" in capsys.readouterr().out
    assert not (out / ".partial").exists()  # the kept detections go once the report holds them


def test_an_interrupted_evaluation_resumes_from_the_scenes_it_finished(tiny_root, tmp_path, monkeypatch):
    """evaluate_detector(resume_dir=): after an interruption in the second scene, a run with the same weights and
    settings detects only that scene again and writes the uninterrupted run's report; other weights detect all."""
    from oddsparse.eval import evaluate as module
    from reference_eval import tiny_detector

    detector = tiny_detector()
    real, calls = module.detect_scene, []

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "detect_scene", counted)
    options = dict(views=(1, TINY_VIEWS), progress=False)
    interrupt_at = -1
    whole = evaluate_detector(detector, tiny_root, "all", **options)
    partial = tmp_path / "partial"
    calls.clear()
    interrupt_at = 3  # the first scene's two runs finish, the second scene's first does not
    with pytest.raises(KeyboardInterrupt):
        evaluate_detector(detector, tiny_root, "all", resume_dir=partial, **options)
    assert len(list(partial.glob("*.json"))) == 1
    calls.clear()
    interrupt_at = -1
    resumed = evaluate_detector(detector, tiny_root, "all", resume_dir=partial, **options)
    assert len(calls) == 2  # the second scene only
    def without_time(rows):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
    assert without_time(resumed.pop("per_scene")) == without_time(whole.pop("per_scene"))
    assert resumed == whole
    calls.clear()
    with torch.no_grad():
        next(detector.parameters()).add_(0.01)  # other weights: nothing kept applies
    evaluate_detector(detector, tiny_root, "all", resume_dir=partial, **options)
    assert len(calls) == 4
    calls.clear()
    evaluate_detector(detector, tiny_root, "all", resume_dir=partial, **options)
    assert len(calls) == 0  # the same weights and settings again: every scene kept
    detector.density_threshold += 0.05  # another test-time setting: nothing kept applies
    evaluate_detector(detector, tiny_root, "all", resume_dir=partial, **options)
    assert len(calls) == 4


def test_eval_refuses_a_primary_setting_no_scene_stores_before_evaluating(tiny_root, tmp_path, capsys):
    """--views 1,N with N above every scene's stored views: one line naming the root, the views it stores and the
    options that fix it, exit status 2, before any scene is run (it used to evaluate everything, then fail)."""
    from oddsparse.cli import main

    checkpoint = save_tiny_checkpoint(tmp_path / "final.pt", tiny_root)
    out = tmp_path / "eval"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(checkpoint), "--split", "all", "--views", f"1,{TINY_VIEWS + 1}",
                 "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("oddsparse eval: error: ") and err.count("\n") == 1
    assert f"stores {TINY_VIEWS + 1} views (at most {TINY_VIEWS})" in err and "--primary-views" in err
    assert not out.exists()

    class Unused:
        def __call__(self, *args, **kwargs):
            raise AssertionError("a scene was evaluated")

    with pytest.raises(ValueError, match=f"at most {TINY_VIEWS}"):  # the library raises before running the detector
        evaluate_detector(Unused(), tiny_root, "all", views=(1, TINY_VIEWS + 1), progress=False)
    assert main(["eval", "--checkpoint", str(checkpoint), "--split", "all", "--views", f"1,{TINY_VIEWS + 1}",
                 "--primary-views", "1", "--out", str(out), "--quiet"]) == 0  # a primary setting that exists


def test_eval_cli_threshold_overrides(tiny_root, tmp_path, capsys):
    """--carve-threshold / --density-threshold replace the checkpoint's values (recorded in the report)."""
    from oddsparse.cli import main
    from oddsparse.models.detector import load_detector

    checkpoint = save_tiny_checkpoint(tmp_path / "final.pt", tiny_root)
    stored, _ = load_detector(checkpoint)
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(checkpoint), "--split", "all", "--views", "1", "--out", str(out),
                 "--carve-threshold", "0.65", "--density-threshold", "0.4", "--test-flips", "2", "--box-consensus",
                 "--register-objects", "--merge-floating", "2", "--box-delta-scale", "0.5", "--objectness-threshold", "0.25",
                 "--box-nms-iou", "0.4", "--quiet"]) == 0
    settings = json.loads((out / "report.json").read_text())["settings"]
    assert (settings["carve_threshold"], settings["density_threshold"]) == (0.65, 0.4)
    assert settings["test_flips"] == 2 and stored.test_flips == 0
    assert settings["box_consensus"] and settings["register_objects"]
    assert not (stored.box_consensus or stored.register_objects)
    assert settings["merge_floating"] == 2.0 and stored.merge_floating == 0.0
    assert settings["box_delta_scale"] == 0.5 and stored.box_delta_scale == 1.0
    assert settings["objectness_threshold"] == 0.25 and stored.objectness_threshold == 0.5
    assert settings["box_nms_iou"] == 0.4 and stored.box_nms_iou == 0.0
    assert (stored.scene_model.carve_threshold, stored.density_threshold) != (0.65, 0.4)
    capsys.readouterr()
    for option, value, interval in (("--carve-threshold", "1.5", "(0, 1)"), ("--carve-threshold", "0", "(0, 1)"),
                                    ("--density-threshold", "1", "(0, 1)"), ("--density-threshold", "nan", "(0, 1)"),
                                    ("--objectness-threshold", "1.5", "[0, 1]"),
                                    ("--objectness-threshold", "-0.1", "[0, 1]"), ("--box-nms-iou", "1.2", "[0, 1]")):
        with pytest.raises(SystemExit):  # usage errors, before the checkpoint is read
            main(["eval", "--checkpoint", str(tmp_path / "absent.pt"), "--out", str(out), f"{option}={value}"])
        assert f"argument {option}: must be in {interval}, got {value}" in capsys.readouterr().err
    for value in ("0", "1"):  # the closed interval's ends are values
        assert main(["eval", "--checkpoint", str(checkpoint), "--split", "all", "--views", "1", "--out", str(out),
                     "--objectness-threshold", value, "--quiet"]) == 0
        assert json.loads((out / "report.json").read_text())["settings"]["objectness_threshold"] == float(value)
    for option in ("--test-flips", "--merge-floating", "--box-delta-scale"):  # usage errors, before the checkpoint is read
        with pytest.raises(SystemExit):
            main(["eval", "--checkpoint", str(tmp_path / "absent.pt"), "--out", str(out), option, "-1"])
        assert f"argument {option}: must be >= 0, got -1" in capsys.readouterr().err


def test_report_records_the_detectors_test_time_settings_on_every_path(tiny_root, tmp_path):
    """evaluate_detector itself (the recipes' path, not only the CLI) states the detector's box settings."""
    from oddsparse.models.detector import load_detector

    detector, _ = load_detector(save_tiny_checkpoint(tmp_path / "final.pt", tiny_root))
    detector.merge_floating, detector.box_consensus, detector.density_threshold = 3.0, True, 0.35
    settings = evaluate_detector(detector, tiny_root, "all", views=(1,), max_scenes=1, progress=False)["settings"]
    assert settings["merge_floating"] == 3.0 and settings["box_consensus"] is True
    assert settings["density_threshold"] == 0.35 and settings["register_objects"] is False
    assert settings["carve_threshold"] == detector.scene_model.carve_threshold
    assert settings["test_flips"] == detector.test_flips
    json.dumps(settings)  # plain JSON values
    # a detector without these attributes (any callable module) records none of them
    metas = _scenes(tiny_root)
    oracle = OracleDetector({n: (m.world_to_cam[0], m.boxes, torch.full((len(m.object_names),), 0.5))
                             for n, m in metas.items()})
    plain = evaluate_detector(oracle, tiny_root, "all", views=(1,), progress=False)["settings"]
    assert not set(plain) & {"merge_floating", "box_consensus", "carve_threshold"}


def test_gt_box_mode_scores_the_ground_truth_boxes(tmp_path):
    """With boxes="gt" the detector is asked to score exactly the GT boxes: every GT object is matched."""
    import torch

    from oddsparse.data.synth import generate_dataset
    from oddsparse.eval.evaluate import evaluate_detector
    from oddsparse.geometry.boxes import as_yaw_boxes, box_iou_3d

    root = tmp_path / "data"
    generate_dataset(root, "parts", 2, 5, objects=(3, 3), views=4, size=48, progress=False)
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, images, K, world_to_cam, boxes=None):
            assert boxes is not None, "gt mode must pass the boxes"
            given, scene_index = boxes
            seen.append(given)
            from types import SimpleNamespace
            return SimpleNamespace(boxes=given, scene_index=scene_index,
                                   scores=torch.linspace(0.1, 0.9, given.center.shape[0]))

    report = evaluate_detector(Recorder(), root, "all", views=(2,), boxes="gt", progress=False)
    assert report["num_missed"] == 0 and report["box_recall"] == 1.0
    assert report["settings"]["boxes"] == "gt"
    from oddsparse.data import read_scene

    folders = sorted(p for p in root.iterdir() if (p / "scene3d.metadata.json").is_file())
    assert len(seen) == len(folders)
    for given, folder in zip(seen, folders):  # the GT boxes in canonical form: the same boxes (IoU 1)
        gt = as_yaw_boxes(read_scene(folder, views=[0]).boxes)
        iou = torch.diagonal(box_iou_3d(given, gt)).float()
        assert torch.allclose(iou, torch.ones_like(iou), atol=1e-4)
    with pytest.raises(ValueError, match="boxes must be"):
        evaluate_detector(Recorder(), root, "all", views=(2,), boxes="oracle", progress=False)


def test_gt_boxes_can_come_from_what_the_views_show(tiny_root, tmp_path, capsys):
    """box_source="observed": the GT boxes scored (boxes="gt") and matched are observed_boxes, recorded in
    the report; the CLI takes --box-source, else the checkpoint's training box_source, else metadata."""
    from types import SimpleNamespace

    from oddsparse.cli import main
    from oddsparse.data import observed_boxes
    from oddsparse.geometry.boxes import as_yaw_boxes, box_iou_3d
    from oddsparse.utils.checkpoint import save_checkpoint

    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, images, K, world_to_cam, boxes=None):
            given, scene_index = boxes
            seen.append(given)
            return SimpleNamespace(boxes=given, scene_index=scene_index, scores=torch.full((len(given.center),), 0.5))

    report = evaluate_detector(Recorder(), tiny_root, "all", views=(2,), boxes="gt", box_source="observed",
                               progress=False)
    assert report["settings"]["box_source"] == "observed" and report["box_recall"] == 1.0
    folders = sorted(p for p in tiny_root.iterdir() if (p / "scene3d.metadata.json").is_file())
    for given, folder in zip(seen, folders):
        observed, published = as_yaw_boxes(observed_boxes(folder)), as_yaw_boxes(read_scene_metadata(folder).boxes)
        assert torch.allclose(torch.diagonal(box_iou_3d(given, observed)).float(), torch.ones(len(given.center)),
                              atol=1e-4)
        assert not torch.allclose(given.size.float(), published.size.float(), atol=1e-3)

    checkpoint = save_tiny_checkpoint(tmp_path / "final.pt", tiny_root)
    for options, expected in (([], "metadata"), (["--box-source", "observed"], "observed")):
        out = tmp_path / f"eval-{expected}"
        assert main(["eval", "--checkpoint", str(checkpoint), "--split", "all", "--views", "1", "--out", str(out),
                     "--max-scenes", "1", "--quiet", *options]) == 0
        assert json.loads((out / "report.json").read_text())["settings"]["box_source"] == expected
    payload = torch.load(checkpoint, weights_only=True)
    payload["config"]["box_source"] = "observed"  # a run trained with --box_source observed
    save_checkpoint(checkpoint, payload)
    out = tmp_path / "eval-trained-observed"
    assert main(["eval", "--checkpoint", str(checkpoint), "--split", "all", "--views", "1", "--out", str(out),
                 "--max-scenes", "1", "--quiet"]) == 0
    assert json.loads((out / "report.json").read_text())["settings"]["box_source"] == "observed"
    capsys.readouterr()
