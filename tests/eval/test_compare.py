"""Paired comparison of two eval reports (oddsparse.eval.compare), against hand-computed values."""
from __future__ import annotations

import json
import re

import pytest

from oddsparse.eval.compare import bootstrap_object_auroc, compare_reports, format_comparison


def report(values, *, views=None, per_type=None, **top):
    rows = [{"name": f"s{i}", "object_AUROC": v} for i, v in enumerate(values)]
    if views is not None:
        rows = [dict(row, num_views=views) for row in rows]
    known = [v for v in values if v is not None]
    out = {"object_AUROC": sum(known) / len(known), "object_accuracy": 0.5, "box_recall": 1.0,
           "per_scene": rows, "per_type": per_type or {}}
    out.update(top)
    return out


def test_bootstrap_of_two_scenes_spans_them_and_a_constant_offset_collapses():
    # two scenes: a draw's mean is one of them (probability 1/4 each) or their average, so the 2.5 and
    # 97.5 percentiles of 2000 draws are the two values themselves
    interval, diff = bootstrap_object_auroc(report([0.2, 0.8]))
    assert interval == pytest.approx((0.2, 0.8)) and diff is None
    # b = a + 0.1 on every scene: the paired interval of the difference is exactly 0.1, though the
    # unpaired intervals of a and b overlap almost entirely
    values = [0.1, 0.9, 0.4, 0.6, 0.8, None]
    shifted = report([None if v is None else v + 0.1 for v in values])
    shifted["per_scene"].reverse()  # paired by name, not by position
    interval, diff = bootstrap_object_auroc(shifted, report(values))
    assert diff == pytest.approx((0.1, 0.1))
    assert interval[0] < 0.6 < interval[1]
    assert bootstrap_object_auroc({"per_scene": []}) == (None, None)


def _naive_percentile(values, q):
    """Linear interpolation between the order statistics (numpy's default), by hand."""
    ordered = sorted(values)
    position = q / 100 * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def test_bootstrap_intervals_against_a_naive_loop_and_compare_puts_each_on_its_report():
    """The 2.5 and 97.5 percentiles of the draws' means (and of the paired differences), with the same draws of
    scenes sorted by name, against a plain loop; compare_reports shows each report's own interval."""
    import numpy as np

    a_values = [0.31, 0.9, 0.55, None, 0.72, 0.12, 0.64, 0.47]
    b_values = [0.5, 0.85, 0.2, 0.6, None, 0.33, 0.7, 0.91]
    a, b = report(a_values), report(b_values)
    interval, diff = bootstrap_object_auroc(a, b, draws=500, seed=3)
    names = sorted(f"s{i}" for i in range(len(a_values)))
    a_by, b_by = ({f"s{i}": v for i, v in enumerate(values)} for values in (a_values, b_values))
    rng = np.random.default_rng(3)
    means, diffs = [], []
    for _ in range(500):
        pick = [names[int(i)] for i in rng.integers(0, len(names), len(names))]
        mine = [a_by[n] for n in pick if a_by[n] is not None]
        other = [b_by[n] for n in pick if b_by[n] is not None]
        means.append(sum(mine) / len(mine))
        diffs.append(means[-1] - sum(other) / len(other))
    assert interval == pytest.approx((_naive_percentile(means, 2.5), _naive_percentile(means, 97.5)))
    assert diff == pytest.approx((_naive_percentile(diffs, 2.5), _naive_percentile(diffs, 97.5)))
    result = compare_reports(a, b, names=("first", "second"), draws=500, seed=3)
    assert result["summary"]["first"]["object_AUROC_CI"] == pytest.approx(list(interval))
    assert result["summary"]["second"]["object_AUROC_CI"] == pytest.approx(
        list(bootstrap_object_auroc(b, draws=500, seed=3)[0]))
    assert result["summary"]["first"]["object_AUROC_CI"] != pytest.approx(result["summary"]["second"]["object_AUROC_CI"])


def test_bootstrap_reads_the_primary_views_of_a_report_with_several():
    several = report([0.5, 0.5], views=1)
    several["per_scene"] += report([1.0, 1.0], views=5)["per_scene"]
    several["primary_views"] = 5
    assert bootstrap_object_auroc(several)[0] == pytest.approx((1.0, 1.0))
    several["primary_views"] = 1
    assert bootstrap_object_auroc(several)[0] == pytest.approx((0.5, 0.5))


def test_compare_reports_difference_counts_and_types():
    a = report([0.5, 0.6, 0.7, None], per_type={"crack": {"object_AUROC": 0.4}, "bump": {"object_AUROC": 0.6}})
    b = report([0.7, 0.6, 0.4, None], per_type={"crack": {"object_AUROC": 0.5}})
    result = compare_reports(a, b, names=("batch", "group"))
    # per-scene differences +0.2, 0, -0.3 (the fourth scene has a single class): mean -1/30
    assert result["difference"]["object_AUROC"] == pytest.approx(-0.1 / 3)
    assert result["scenes"] == {"higher": 1, "lower": 1, "equal": 1}
    assert (result["num_scenes"], result["num_scenes_with_auroc"]) == (4, 3)
    low, high = result["difference"]["object_AUROC_CI"]
    assert -0.3 <= low < -0.1 / 3 < high <= 0.2
    assert result["per_type"] == {"bump": {"batch": 0.6, "group": None}, "crack": {"batch": 0.4, "group": 0.5}}
    assert result["summary"]["group"]["object_AUROC"] == pytest.approx(1.7 / 3)
    table = format_comparison(result)
    assert "| crack (object_AUROC) | 0.400 | 0.500 | +0.100 |" in table
    assert "| bump (object_AUROC) | 0.600 | - | - |" in table
    assert "group higher in 1, lower in 1, equal in 1" in table
    json.dumps(result, allow_nan=False)


def test_compare_reports_without_any_scene_auroc_print_dashes(tmp_path, capsys):
    """Scenes of one class each (all normal) have no AUROC: no intervals, and the table, figure and last line
    say '-' instead of failing."""
    from oddsparse.cli import main

    paths = []
    for name in ("a", "b"):
        rows = [{"name": f"s{i}", "object_AUROC": None} for i in range(2)]
        path = tmp_path / name / "report.json"
        path.parent.mkdir()
        path.write_text(json.dumps({"object_AUROC": None, "object_accuracy": 1.0, "box_recall": 1.0,
                                    "per_scene": rows, "per_type": {}}))
        paths.append(path)
    result = compare_reports(json.loads(paths[0].read_text()), json.loads(paths[1].read_text()))
    assert result["difference"] == {"object_AUROC": None, "object_AUROC_CI": None}
    assert "| object_AUROC | - | - | - |" in format_comparison(result)
    assert main(["compare", *map(str, paths), "--out", str(tmp_path / "cmp")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("auroc_a=- ")
    assert (tmp_path / "cmp" / "comparison.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_reports_refuses_other_scenes():
    a, b = report([0.5, 0.6]), report([0.5, 0.6, 0.7])
    with pytest.raises(ValueError, match=r"'per_scene' differs: 0 scenes only in a\.json .* 1 only in b\.json"):
        compare_reports(a, b, sources=("a.json", "b.json"))


def test_compare_cli_writes_json_table_and_figure(tmp_path, capsys):
    from oddsparse.cli import main

    paths = []
    for name, values in (("batch", [0.5, 0.6, 0.7]), ("group", [0.6, 0.7, 0.8])):
        path = tmp_path / name / "eval" / "report.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(report(values, per_type={"crack": {"object_AUROC": values[0]}})))
        paths.append(path)
    assert main(["compare", *map(str, paths), "--out", str(tmp_path / "cmp")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    fields = dict(item.split("=") for item in last.split())
    assert float(fields["difference"]) == pytest.approx(0.1) and float(fields["diff_low"]) == pytest.approx(0.1)
    assert fields["scenes"] == "3"
    written = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert written["names"] == ["batch/eval", "group/eval"]
    assert (tmp_path / "cmp" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert "batch/eval" in (tmp_path / "cmp" / "comparison.md").read_text()
    # bad input: the file and the field are named, no traceback
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"object_AUROC": 0.5}))
    capsys.readouterr()
    assert main(["compare", str(paths[0]), str(broken)]) == 2  # one line, exit status 2 as for other bad input
    assert re.fullmatch(r"oddsparse compare: error: .*broken\.json: field 'per_scene' missing.*\n",
                        capsys.readouterr().err)
    assert main(["compare", str(paths[0]), str(tmp_path / "missing.json")]) == 2
    assert "missing.json: no such report" in capsys.readouterr().err
    rows = [{"name": "s0", "object_AUROC": 0.5}, {"name": "s1", "object_AUROC": "high"}]
    broken.write_text(json.dumps({"per_scene": rows}))
    assert main(["compare", str(paths[0]), str(broken)]) == 2
    assert "broken.json: field 'per_scene[1].object_AUROC' must be a number or null, got 'high'" in \
        capsys.readouterr().err


def test_compare_figure_of_reports_whose_scenes_all_read_the_same(tmp_path):
    """Equal per-scene values: the interval is the value up to rounding (the mean of three 0.7s is 0.6999...),
    a hair below the report's own 0.7; the figure's error bar is drawn from 0, not refused as negative."""
    from oddsparse.eval.compare import write_comparison

    result = compare_reports(report([0.7, 0.7, 0.7], object_AUROC=0.7), report([0.6, 0.6, 0.6], object_AUROC=0.6))
    low = result["summary"]["A"]["object_AUROC_CI"][0]
    assert low == pytest.approx(0.7) and low < 0.7  # the rounding this is about
    write_comparison(result, tmp_path)
    assert any(path.suffix == ".png" and path.stat().st_size > 0 for path in tmp_path.iterdir())
