"""recipes/report_perceptibility.py end to end: the ideal observer's ceilings against per-scene AUROCs computed
by sklearn from the written records, the changed-pixel summary against the records, resume, argument checks."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from recipe_loader import load_recipe


@pytest.fixture(scope="module")
def module():
    return load_recipe("report_perceptibility")


def _ceiling_by_hand(records, size, threshold_index, min_pixels):
    per_scene = []
    for r in records:
        labels = np.asarray(r["labels"], dtype=bool)
        if labels.all() or not labels.any():
            continue  # AUROC undefined on one class
        changed = np.asarray(r["changed_pixels"][str(size)])[:, :, threshold_index].sum(1)
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
        normal = ~np.asarray(r["labels"], dtype=bool)
        assert not np.asarray(r["changed_pixels"]["32"])[normal].any()
    assert any(np.asarray(r["changed_pixels"]["64"]).sum() > 0 for r in records)
    for size in (32, 64):
        for t_index, threshold in enumerate((8, 32)):
            result = report["results"][f"{size}/{threshold}"]
            for n in (1, 4, 16):
                assert result["ceilings"][str(n)]["object_AUROC"] == pytest.approx(
                    _ceiling_by_hand(records, size, t_index, n))
            changed = [int(np.asarray(r["changed_pixels"][str(size)])[i, :, t_index].sum())
                       for r in records for i, t in enumerate(r["types"]) if t != "normal"]
            summary = result["changed_pixels"]
            assert sum(v["count"] for v in summary.values()) == len(changed)
            assert np.mean([c == 0 for c in changed]) == pytest.approx(
                sum(v["fraction_none"] * v["count"] for v in summary.values()) / len(changed))
    # more evidence needed never raises the ceiling; finer images never show less
    ceilings = [report["results"]["64/32"]["ceilings"][str(n)]["object_AUROC"] for n in module.MIN_PIXELS]
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
