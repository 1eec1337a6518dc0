"""Compare two evaluation reports of the same test scenes: paired bootstrap intervals of object_AUROC.

Two detectors evaluated on the same scenes (``oddsparse eval`` reports, :mod:`oddsparse.eval.evaluate`)
differ by less than the interval of either one's object_AUROC on a few hundred scenes, yet their
difference is measured far more tightly when the scenes are paired: :func:`bootstrap_object_auroc`
resamples scenes with replacement, the same draws for both reports, and reads the interval of the
difference of the per-scene means (the paper's object_AUROC). :func:`compare_reports` tabulates two
reports that way (overall, and per anomaly type side by side); ``oddsparse compare A.json B.json``
prints the table and writes JSON and a figure.

Example:
    $ oddsparse compare runs/partsad/eval/report.json runs/partsad-gn/eval/report.json \\
          --names batch group --out runs/compare-norm
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from oddsparse.utils.errors import InputError

__all__ = ["bootstrap_object_auroc", "compare_reports", "load_report", "format_comparison", "write_comparison",
           "add_compare_arguments", "run_compare"]

_SUMMARY_KEYS = ("object_AUROC", "object_accuracy", "object_AUROC_pooled", "object_accuracy_pooled", "box_recall")


def _per_scene_auroc(report: dict) -> dict[str, float | None]:
    rows = report.get("per_scene", [])
    if len({row.get("num_views") for row in rows}) > 1:  # a report with several view counts: keep its primary one, as its top-level metrics do
        primary = report.get("primary_views")
        rows = [row for row in rows if row.get("num_views") == primary]
    return {row["name"]: row.get("object_AUROC") for row in rows}


def bootstrap_object_auroc(report: dict, reference: dict | None = None, *, draws: int = 2000, seed: int = 0):
    """95% interval of the per-scene object_AUROC (and of its difference to ``reference``), resampling test scenes.

    Scenes are drawn with replacement (the same draws for both reports, paired by scene name); a
    scene without an AUROC (a single class) is left out of a draw's mean, as in the metric itself.
    A report holding several numbers of views is read at its ``primary_views``.
    Returns ``((low, high), (diff_low, diff_high) or None)``; ``(None, None)`` for a report without scenes.
    """
    values = _per_scene_auroc(report)
    names = sorted(values)
    if not names:
        return None, None
    rng = np.random.default_rng(seed)
    a = np.array([np.nan if values[n] is None else values[n] for n in names], dtype=float)
    b = None
    if reference is not None:
        ref = _per_scene_auroc(reference)
        b = np.array([np.nan if ref.get(n) is None else ref[n] for n in names], dtype=float)
    means, diffs = [], []
    for _ in range(draws):
        pick = rng.integers(0, len(names), len(names))
        defined = ~np.isnan(a[pick])
        means.append(a[pick][defined].mean() if defined.any() else np.nan)  # a draw of single-class scenes: none
        if b is not None:
            other = ~np.isnan(b[pick])
            diffs.append(means[-1] - b[pick][other].mean() if other.any() else np.nan)
    if np.isnan(means).all():
        return None, None
    interval = tuple(float(v) for v in np.nanpercentile(means, [2.5, 97.5]))
    diff = tuple(float(v) for v in np.nanpercentile(diffs, [2.5, 97.5])) if diffs else None
    return interval, diff


def load_report(path: str | Path) -> dict:
    """An ``oddsparse eval`` report (JSON, never unpickled), with a clear error naming the file and the field."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such report (expected an `oddsparse eval` report.json)") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not a JSON report ({error})") from None
    if not isinstance(report, dict) or not isinstance(report.get("per_scene"), list):
        raise ValueError(f"{path}: field 'per_scene' missing or not a list (expected an `oddsparse eval` report.json)")
    for i, row in enumerate(report["per_scene"]):
        if not isinstance(row, dict) or "name" not in row:
            raise ValueError(f"{path}: field 'per_scene[{i}].name' missing")
        value = row.get("object_AUROC")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise ValueError(f"{path}: field 'per_scene[{i}].object_AUROC' must be a number or null, got {value!r}")
    return report


def compare_reports(report_a: dict, report_b: dict, *, names: Sequence[str] = ("A", "B"), draws: int = 2000,
                    seed: int = 0, sources: Sequence[str] = ("report A", "report B")) -> dict:
    """Paired comparison of two reports of the same scenes (``b`` against ``a``).

    Returns a JSON-ready dict: ``names``, ``num_scenes``, ``summary[name]`` (the top-level metrics of
    :data:`_SUMMARY_KEYS` and ``object_AUROC_CI``), ``difference`` (``object_AUROC`` of b minus a as
    the mean of per-scene differences over scenes with an AUROC in both, with its paired 95% interval
    ``object_AUROC_CI``), ``scenes`` (how many scenes b reads higher / lower / equal), and ``per_type``
    (``{type: {name: object_AUROC}}``, side by side; the reports hold no per-scene type to pair).
    Raises ValueError, naming ``sources``, when the reports do not hold the same scenes.
    """
    auroc_a, auroc_b = _per_scene_auroc(report_a), _per_scene_auroc(report_b)
    if set(auroc_a) != set(auroc_b):
        only_a, only_b = sorted(set(auroc_a) - set(auroc_b)), sorted(set(auroc_b) - set(auroc_a))
        raise ValueError(f"compare_reports: field 'per_scene' differs: {len(only_a)} scenes only in {sources[0]} "
                         f"({only_a[:3]}), {len(only_b)} only in {sources[1]} ({only_b[:3]}); evaluate both on the "
                         f"same split and views")
    if not auroc_a:
        raise ValueError(f"compare_reports: field 'per_scene' of {sources[0]} is empty")
    name_a, name_b = names
    interval_a, _ = bootstrap_object_auroc(report_a, draws=draws, seed=seed)
    interval_b, diff = bootstrap_object_auroc(report_b, report_a, draws=draws, seed=seed)
    both = [n for n in auroc_a if auroc_a[n] is not None and auroc_b[n] is not None]
    deltas = np.array([auroc_b[n] - auroc_a[n] for n in both], dtype=float)
    summary = {}
    for name, report, interval in ((name_a, report_a, interval_a), (name_b, report_b, interval_b)):
        summary[name] = {key: report.get(key) for key in _SUMMARY_KEYS}
        summary[name]["object_AUROC_CI"] = list(interval) if interval else None
    types = sorted(set(report_a.get("per_type", {})) | set(report_b.get("per_type", {})))
    per_type = {t: {name: report.get("per_type", {}).get(t, {}).get("object_AUROC")
                    for name, report in ((name_a, report_a), (name_b, report_b))} for t in types}
    return {
        "names": [name_a, name_b],
        "num_scenes": len(auroc_a),
        "num_scenes_with_auroc": len(both),
        "summary": summary,
        "difference": {"object_AUROC": float(deltas.mean()) if len(deltas) else None,
                       "object_AUROC_CI": list(diff) if diff else None},
        "scenes": {"higher": int((deltas > 0).sum()), "lower": int((deltas < 0).sum()),
                   "equal": int((deltas == 0).sum())},
        "per_type": per_type,
        "settings": {"draws": draws, "seed": seed, "sources": list(sources)},
    }


def _fmt(value, digits: int = 3, sign: str = "") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:{sign}.{digits}f}"


def _with_interval(value, interval, sign: str = "") -> str:
    """``value [low, high]``, or the value alone where there is no interval (no scene has an AUROC)."""
    if not interval:
        return _fmt(value, sign=sign)
    return f"{_fmt(value, sign=sign)} [{', '.join(_fmt(v, sign=sign) for v in interval)}]"


def format_comparison(result: dict) -> str:
    """A Markdown table of :func:`compare_reports`' result."""
    name_a, name_b = result["names"]
    lines = [f"| | {name_a} | {name_b} | {name_b} - {name_a} (paired 95% CI) |", "|---|---|---|---|"]
    diff = result["difference"]
    ci = diff["object_AUROC_CI"]
    for key in _SUMMARY_KEYS:
        a, b = result["summary"][name_a][key], result["summary"][name_b][key]
        cells = [_fmt(a), _fmt(b)]
        if key == "object_AUROC":
            cells = [_with_interval(a, result["summary"][name_a]["object_AUROC_CI"]),
                     _with_interval(b, result["summary"][name_b]["object_AUROC_CI"])]
            change = _with_interval(diff["object_AUROC"], ci, sign="+")
        else:
            change = f"{b - a:+.3f}" if a is not None and b is not None else "-"
        lines.append(f"| {key} | {cells[0]} | {cells[1]} | {change} |")
    for t, values in result["per_type"].items():
        a, b = values[name_a], values[name_b]
        change = f"{b - a:+.3f}" if a is not None and b is not None else "-"
        lines.append(f"| {t} (object_AUROC) | {_fmt(a)} | {_fmt(b)} | {change} |")
    scenes = result["scenes"]
    lines.append(f"\n{result['num_scenes']} scenes ({result['num_scenes_with_auroc']} with an AUROC in both): "
                 f"{name_b} higher in {scenes['higher']}, lower in {scenes['lower']}, equal in {scenes['equal']}.")
    return "\n".join(lines)


def write_comparison(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write ``comparison.json``, ``comparison.md`` (atomically) and ``comparison.png`` into ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from oddsparse.utils.checkpoint import atomic_write_bytes
    from oddsparse.utils.figures import interval_error, save_figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"json": out_dir / "comparison.json", "markdown": out_dir / "comparison.md",
               "figure": out_dir / "comparison.png"}
    atomic_write_bytes(written["json"], (json.dumps(result, indent=2, allow_nan=False) + "\n").encode())
    atomic_write_bytes(written["markdown"], (format_comparison(result) + "\n").encode())
    name_a, name_b = result["names"]
    groups = ["all"] + list(result["per_type"])
    values = {name: [result["summary"][name]["object_AUROC"]] + [result["per_type"][t][name]
                                                                   for t in result["per_type"]]
              for name in (name_a, name_b)}
    fig, axis = plt.subplots(figsize=(max(3.6, 1.2 + 1.1 * len(groups)), 3.4))  # the title needs 3.6 in
    x = np.arange(len(groups))
    for offset, name in ((-0.2, name_a), (0.2, name_b)):
        heights = [np.nan if v is None else v for v in values[name]]
        axis.bar(x + offset, heights, 0.4, label=name)
    for offset, name in ((-0.2, name_a), (0.2, name_b)):
        low, high = result["summary"][name]["object_AUROC_CI"] or (np.nan, np.nan)
        mid = result["summary"][name]["object_AUROC"]
        if mid is not None:
            axis.errorbar([offset], [mid], yerr=interval_error(mid, low, high), color="black", capsize=3, lw=1)
    ci = result["difference"]["object_AUROC_CI"]
    title = f"{name_b} - {name_a}: {_with_interval(result['difference']['object_AUROC'], ci, sign='+')}" + \
        (" (paired)" if ci else "")
    axis.axhline(0.5, color="grey", lw=0.8, ls=":")
    axis.set_xticks(x, groups)
    axis.set_ylim(0, 1.15)
    axis.set_yticks(np.linspace(0, 1, 6))
    axis.set_ylabel("object_AUROC (scene mean)")
    axis.set_title(f"{title}, {result['num_scenes']} scenes", fontsize=9)
    axis.legend(fontsize=8, loc="upper center", ncol=2, frameon=False)
    fig.tight_layout()
    save_figure(fig, written["figure"], dpi=120)
    return written


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``oddsparse compare``."""
    parser.add_argument("report_a", type=Path, help="the reference report (an `oddsparse eval` report.json)")
    parser.add_argument("report_b", type=Path, help="the report compared with it (same scenes and views)")
    parser.add_argument("--names", nargs=2, default=None, metavar=("A", "B"),
                        help="column names (default: the reports' parent folders)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for comparison.json / .md / .png (default: print only)")
    parser.add_argument("--draws", type=int, default=2000, help="bootstrap draws (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")


def run_compare(args: argparse.Namespace) -> int:
    """``oddsparse compare``: print the table; the last line is ``key=value`` pairs."""
    try:
        report_a, report_b = load_report(args.report_a), load_report(args.report_b)
        names = args.names or [f"{p.parent.parent.name}/{p.parent.name}" for p in (args.report_a, args.report_b)]
        if names[0] == names[1]:
            names = [f"{names[0]} (A)", f"{names[1]} (B)"]
        result = compare_reports(report_a, report_b, names=names, draws=args.draws, seed=args.seed,
                                 sources=[str(args.report_a), str(args.report_b)])
    except (OSError, ValueError) as error:  # one line naming the file and the field, exit status 2
        raise InputError(str(error)) from error
    print(format_comparison(result))
    if args.out is not None:
        for path in write_comparison(result, args.out).values():
            print(path)
    ci = result["difference"]["object_AUROC_CI"] or (None, None)
    print(f"auroc_a={_fmt(result['summary'][names[0]]['object_AUROC'], 4)} "
          f"auroc_b={_fmt(result['summary'][names[1]]['object_AUROC'], 4)} "
          f"difference={_fmt(result['difference']['object_AUROC'], 4)} diff_low={_fmt(ci[0], 4)} "
          f"diff_high={_fmt(ci[1], 4)} scenes={result['num_scenes']}")
    return 0
