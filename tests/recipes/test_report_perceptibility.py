"""recipes/report_perceptibility.py end to end: the ideal observer's ceilings against per-scene AUROCs computed
by sklearn from the written records (colour and silhouette evidence), the changed-pixel summary against the
records, resume, argument checks."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from recipe_loader import load_recipe


@pytest.fixture(scope="module")
def module():
    return load_recipe("report_perceptibility")


def _changed(record, size, threshold_index):
    """(O,) evidence summed over the views; threshold_index None: the silhouette pixels."""
    if threshold_index is None:
        return np.asarray(record["silhouette_pixels"][str(size)]).sum(1)
    return np.asarray(record["changed_pixels"][str(size)])[:, :, threshold_index].sum(1)


def _ceiling_by_hand(records, size, threshold_index, min_pixels):
    per_scene = []
    for r in records:
        labels = np.asarray(r["labels"], dtype=bool)
        if labels.all() or not labels.any():
            continue  # AUROC undefined on one class
        changed = _changed(r, size, threshold_index)
        per_scene.append(roc_auc_score(labels, labels & (changed >= min_pixels)))
    return float(np.mean(per_scene))


def test_report_perceptibility_end_to_end_and_resumable(module, tmp_path):
    def argv(*extra):
        return ["--family", "parts", "--scenes", "30", "--limit", "4", "--objects", "3", "4", "--stored-views", "4",
                "--render-size", "64", "--views", "2", "--image-sizes", "32", "64", "--thresholds", "8", "32",
                "--out", str(tmp_path), *extra]

    report = module.main(argv())
    assert report["num_test_scenes"] == 4
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "scenes").iterdir())]
    assert len(records) == 4
    for r in records:
        assert np.asarray(r["changed_pixels"]["64"]).shape == (len(r["labels"]), 2, 2)
        assert np.asarray(r["silhouette_pixels"]["64"]).shape == (len(r["labels"]), 2)
        normal = ~np.asarray(r["labels"], dtype=bool)
        assert not np.asarray(r["changed_pixels"]["32"])[normal].any()
        assert not np.asarray(r["silhouette_pixels"]["32"])[normal].any()
    assert any(np.asarray(r["changed_pixels"]["64"]).sum() > 0 for r in records)
    assert any(np.asarray(r["silhouette_pixels"]["64"]).sum() > 0 for r in records)
    for size in (32, 64):
        for t_index, threshold in [(0, 8), (1, 32), (None, "silhouette")]:
            result = report["results"][f"{size}/{threshold}"]
            for n in (1, 4, 16):
                assert result["ceilings"][str(n)]["object_AUROC"] == pytest.approx(
                    _ceiling_by_hand(records, size, t_index, n))
            changed = [int(_changed(r, size, t_index)[i])
                       for r in records for i, t in enumerate(r["types"]) if t != "normal"]
            summary = {k: v for k, v in result["changed_pixels"].items() if k != "turn"}
            assert sum(v["count"] for v in summary.values()) == len(changed)
            turns = [np.asarray(r["turn_silhouette_pixels" if t_index is None else "turn_pixels"][str(size)])
                     [..., t_index if t_index is not None else slice(None)].sum() for r in records]
            assert result["changed_pixels"]["turn"]["quartiles"][1] == pytest.approx(np.median(turns))
            assert np.mean([c == 0 for c in changed]) == pytest.approx(
                sum(v["fraction_none"] * v["count"] for v in summary.values()) / len(changed))
    # more evidence needed never raises the ceiling; finer images never show less
    for key in ("64/32", "64/silhouette"):
        ceilings = [report["results"][key]["ceilings"][str(n)]["object_AUROC"] for n in module.MIN_PIXELS]
        assert all(a >= b - 1e-12 for a, b in zip(ceilings, ceilings[1:]))
    assert (tmp_path / "perceptibility.png").stat().st_size > 0 and (tmp_path / "examples.png").stat().st_size > 0
    assert json.loads((tmp_path / "perceptibility.json").read_text())["results"] == report["results"]

    scene_file = next((tmp_path / "scenes").iterdir())
    stamp = scene_file.stat().st_mtime_ns
    module.main(argv("--no-examples"))
    assert scene_file.stat().st_mtime_ns == stamp  # finished scene kept
    module.main(argv("--no-examples", "--thresholds", "16"))
    assert json.loads(scene_file.read_text())["settings"]["thresholds"] == [16]  # other settings: rendered again
    for bad in (["--thresholds", "0"], ["--views", "5"], ["--limit", "-1"]):
        with pytest.raises(SystemExit):
            module.main(argv(*bad))


def _fake_report(records, views, boxes="gt", seed=0):
    """An eval report on GT boxes whose per_scene rows hold random scores, one per GT object."""
    rng = np.random.default_rng(seed)
    rows = [{"name": r["name"], "num_views": views, "num_anomalous": int(sum(r["labels"])),
             "scores": rng.random(len(r["labels"])).tolist()} for r in records]
    return {"settings": {"boxes": boxes}, "per_scene": rows}


def _by_bin_by_hand(records, rows, size, threshold_index, low, high):
    per_scene = []
    for r, row in zip(records, rows):
        labels = np.asarray(r["labels"], dtype=bool)
        changed = _changed(r, size, threshold_index)
        in_bin = labels & (changed >= low) & (changed <= (np.inf if high is None else high))
        keep = ~labels | in_bin
        if in_bin.any() and (~labels).any():
            per_scene.append(roc_auc_score(labels[keep], np.asarray(row["scores"])[keep]))
    return float(np.mean(per_scene)) if per_scene else None


def test_report_perceptibility_reads_a_detector_by_evidence(module, tmp_path):
    argv = ["--family", "parts", "--scenes", "30", "--limit", "6", "--objects", "3", "4", "--stored-views", "4",
            "--render-size", "64", "--views", "2", "--image-sizes", "48", "--thresholds", "8", "--no-examples",
            "--out", str(tmp_path)]
    module.main(argv)
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "scenes").iterdir())]
    fake = _fake_report(records, views=2)
    path = tmp_path / "report.json"
    path.write_text(json.dumps(fake))
    report = module.main(argv + ["--scores", str(path)])
    assert (tmp_path / "by_evidence.png").stat().st_size > 0
    names = [f"{lo}-{hi}" if hi is not None else f">={lo}" for lo, hi in module.EVIDENCE_BINS]
    for key, t_index in (("48/8", 0), ("48/silhouette", None)):
        by_bin = report["results"][key]["model_by_evidence"]
        assert list(by_bin) == names
        total = 0
        for (low, high), name in zip(module.EVIDENCE_BINS, names):
            expected = _by_bin_by_hand(records, fake["per_scene"], 48, t_index, low, high)
            assert by_bin[name].get("object_AUROC") == (pytest.approx(expected) if expected is not None else None)
            total += by_bin[name]["num_anomalies"]
        assert total == sum(sum(r["labels"]) for r in records)  # every anomaly falls in one bin

    for bad, message in ((_fake_report(records, 2, boxes="predicted"), "settings.boxes"),
                         (_fake_report(records, 3), "no row for scene"),
                         ({"settings": {"boxes": "gt"}, "per_scene": [dict(row, scores=row["scores"][:-1])
                                                                     for row in fake["per_scene"]]}, "scores")):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message) as error:
            module.main(argv + ["--scores", str(path)])
        assert str(path) in str(error.value)
