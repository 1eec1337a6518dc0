"""recipes/report_refresh.py reads the stage-2b record of run folders; gains and the adoption rule by hand."""
from __future__ import annotations

import json

import pytest

from oddsparse.utils.checkpoint import save_checkpoint
from recipe_loader import load_recipe


def _run(folder, variant, validation):
    folder.mkdir()
    save_checkpoint(folder / "box_head_refresh.pt", dict(family="toys", config=dict(variant=variant), stage="2b",
                                                         step=4, validation=validation))
    return folder


def test_report_refresh_gains_and_adoption_by_hand(tmp_path, capsys):
    report = load_recipe("report_refresh")
    broken = _run(tmp_path / "B", "B", dict(steps=[0, 2, 4], losses=[1.2, 0.1, 0.3], best_step=2, adopted=True,
                                            recall_start=0.5, recall_best=0.9, held_out_categories=["car", "duck"]))
    sound = _run(tmp_path / "C", "C", dict(steps=[0, 2, 4], losses=[0.3, 0.2, 0.4], best_step=2))  # older: no field
    kept = _run(tmp_path / "full", "full", dict(steps=[0, 4], losses=[0.5, 0.6], best_step=0, adopted=False))
    records = report.main([str(broken), str(sound), str(kept), "--out", str(tmp_path / "out"), "--min-gain", "2"])
    assert "held-out box recall 0.500 -> 0.900 (held out: car, duck)" in capsys.readouterr().out
    assert [r["label"] for r in records] == ["toys B", "toys C", "toys full"]
    assert [r["gain"] for r in records] == pytest.approx([12.0, 1.5, 1.0])  # start / best
    assert [r["best_loss"] for r in records] == pytest.approx([0.1, 0.2, 0.5])
    assert [r["adopted_at_min_gain"] for r in records] == [True, False, False]  # 12 >= 2; 1.5 < 2; step 0
    assert [r["adopted"] for r in records] == [True, None, False]
    assert [(r["recall_start"], r["recall_best"], r["held_out_categories"]) for r in records] == [
        (0.5, 0.9, ["car", "duck"]), (None, None, None), (None, None, None)]  # older records hold no recall
    assert json.loads((tmp_path / "out" / "refresh.json").read_text())[0]["gain"] == pytest.approx(12.0)
    assert (tmp_path / "out" / "refresh_heldout.png").stat().st_size > 0
    lenient = report.main([str(sound), "--out", str(tmp_path / "out1"), "--min-gain", "1.4"])
    assert lenient[0]["adopted_at_min_gain"] is True
    # the recall gate (default 0.02): the broken head's +0.4 passes it, a +0.01 does not
    strict = report.main([str(broken), "--out", str(tmp_path / "out2"), "--min-recall-gain", "0.5"])
    assert strict[0]["adopted_at_min_gain"] is False
    small = _run(tmp_path / "A", "A", dict(steps=[0, 2], losses=[0.3, 0.1], best_step=2, recall_start=0.9,
                                           recall_best=0.91))
    assert report.main([str(small), "--out", str(tmp_path / "out3")])[0]["adopted_at_min_gain"] is False
    # a fresh start (--box_head_refresh_init fresh): its losses begin with the new head's (2.0), the gain is
    # against the stage-2 head's own held-out loss (0.4): 0.4 / 0.2 = 2
    fresh = _run(tmp_path / "fresh", "full", dict(steps=[0, 2], losses=[2.0, 0.2], best_step=2, stage2_loss=0.4,
                                                  init="fresh"))
    record, = report.main([str(fresh), "--out", str(tmp_path / "out4"), "--min-gain", "2"])
    assert record["gain"] == pytest.approx(2.0) and record["stage2_loss"] == 0.4 and record["init"] == "fresh"
    assert record["adopted_at_min_gain"] is True
    assert report.main([str(fresh), "--out", str(tmp_path / "out5"), "--min-gain", "2.1"])[0]["adopted_at_min_gain"] \
        is False
    assert records[1]["init"] == "stage2" and records[1]["stage2_loss"] == 0.3  # older records: the first loss
    chosen = _run(tmp_path / "chosen", "full", dict(steps=[0, 2], losses=[0.3, 0.2], best_step=2, recall_start=0.9,
                                                    recall_best=0.9, delta_scale_recalls={"0.5": 0.95, "1": 0.9}))
    capsys.readouterr()
    assert report.main([str(chosen), "--out", str(tmp_path / "out6")])[0]["delta_scale_recalls"] == {"0.5": 0.95,
                                                                                                   "1": 0.9}
    assert "box delta scale 0.5 0.950, 1 0.900 -> 0.5" in capsys.readouterr().out
    assert records[0]["delta_scale_recalls"] is None


def test_report_refresh_names_the_file_and_field_it_cannot_read(tmp_path):
    report = load_recipe("report_refresh")
    with pytest.raises(SystemExit, match=r"box_head_refresh\.pt: no such file"):
        report.main([str(tmp_path), "--out", str(tmp_path / "out")])
    plain = _run(tmp_path / "plain", "B", None)
    with pytest.raises(SystemExit, match=r"box_head_refresh\.pt: field 'validation' missing"):
        report.main([str(plain), "--out", str(tmp_path / "out")])
    odd = _run(tmp_path / "odd", "B", dict(steps=[0, 2], losses=[0.3], best_step=2))
    with pytest.raises(SystemExit, match=r"field 'validation' holds 2 steps, 1 losses"):
        report.main([str(odd), "--out", str(tmp_path / "out")])
