"""The benchmark scripts' own code paths (their figures come from running them, never from tests)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from oddsparse.data.scene_io import read_scene_metadata

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_inference_benchmark_generates_scenes_without_a_recipe_cache(tmp_path, monkeypatch):
    """A user without the recipe's synthetic cache: the benchmark generates its scenes, with the recipe's object
    counts and enough views."""
    monkeypatch.setenv("ODDSPARSE_CACHE", str(tmp_path / "no-cache"))
    monkeypatch.setattr("tempfile.mkdtemp", lambda prefix="": str(tmp_path / "generated"))
    bench = load_benchmark("bench_inference")
    recipe, cfg = bench.recipe_config()
    folders, source, generated = bench.find_scenes(recipe, cfg, 1, 5)
    assert "no recipe cache" in source and len(folders) == 1 and generated == tmp_path / "generated"
    assert Path(folders[0]).parent == tmp_path / "generated"
    metadata = read_scene_metadata(folders[0])
    lo, hi = cfg.synthetic_objects
    assert metadata.num_views >= 5 and lo <= len(metadata.object_names) <= hi


def test_device_check_runs_every_section_on_the_cpu(tmp_path, monkeypatch):
    """The script a lent GPU runs once (benchmarks/device_run.sh), rehearsed on the CPU: the float64 reference is
    computed (the float32 run differs from it), every section finishes, the report is written."""
    monkeypatch.setenv("ODDSPARSE_CACHE", str(tmp_path / "no-cache"))
    bench = load_benchmark("device_check")
    out = tmp_path / "out"
    bench.main(["--device", "cpu", "--out", str(out), "--presets", "default", "--repeats", "1"])
    report = json.loads((out / "device_check.json").read_text())["sections"]
    assert {name: section["status"] for name, section in report.items()} == dict.fromkeys(bench.SECTIONS, "ok")
    checks = report["parity"]["checks"]
    assert all(check["passed"] for check in checks.values())
    assert checks["stage1_loss"]["cpu32_error"] > 0 and checks["stage2_grads"]["cpu32_error"] > 0  # float64 ran
    assert min(checks[f"eval_{name}"]["float64"] for name in ("voxels", "boxes", "tokens")) > 0  # work was done
    assert report["environment"]["device"] == "cpu" and report["environment"]["torch"] == torch.__version__
    assert set(report["smoke"]["seconds"]) == {"train", "resume", "eval", "predict"} and report["smoke"]["overlays"] > 0
    assert (out / "smoke_predict_overlay.png").is_file() and (out / "smoke_train.log").is_file()
    timing = report["timing"]["default"]
    assert timing["device"]["total_s"] > 0 and timing["speedup"] > 0
    assert timing["device"]["total_s"] == pytest.approx(sum(timing["device"][f"{s}_s"] for s in bench.STAGES))


def test_device_check_parity_flags_a_device_that_computes_something_else(tmp_path, monkeypatch):
    """A 'device' run whose attention weights (W_Q, W_K, W_V) differ by 1% fails the checks that read the matcher's
    attention, and only those: the bound is not so loose that anything passes, and the attention is live (it reads
    occupied cells)."""
    bench = load_benchmark("device_check")
    original = bench._parity_run
    calls = []

    def perturbed(module, cfg, state, *args, **kwargs):
        calls.append(args[-2:])
        if len(calls) == 3:  # the third run is the device's (after CPU float64 and float32)
            state = dict(state)
            name = next(k for k in state if k.startswith("matcher.") and k.endswith("qkv.weight"))
            state[name] = state[name] * 1.01
        return original(module, cfg, state, *args, **kwargs)

    monkeypatch.setattr(bench, "_parity_run", perturbed)
    result = bench.parity(torch.device("cpu"), tmp_path, 1e-5)
    assert [str(dtype) for _, dtype in calls] == ["torch.float64", "torch.float32", "torch.float32"]
    failed = {name for name, check in result["checks"].items() if not check["passed"]}
    assert not result["passed"] and {"eval_gt_logits", "stage2_grads"} <= failed
    assert not failed & {"stage0_loss", "stage0_grads", "stage1_loss", "stage1_grads", "eval_foreground"}


def test_loading_benchmark_runs_both_loops(tmp_path, monkeypatch, capsys):
    """bench_loading.py without a recipe cache: it generates scenes and times both loops (stage 1 of the smoke
    preset, whose teacher features it makes up)."""
    monkeypatch.setenv("ODDSPARSE_CACHE", str(tmp_path / "no-cache"))
    bench = load_benchmark("bench_loading")
    threads = torch.get_num_threads()
    try:
        pairs = bench.main(["--preset", "smoke", "--stage", "1", "--steps", "2", "--repeats", "1", "--scenes", "2",
                            "--threads", "1"])
    finally:
        torch.set_num_threads(threads)  # the script sets the process's threads
    assert min(pairs[k] for k in ("read_s", "compute_s", "step_s", "prefetch_step_s")) > 0
    assert 1.0 <= pairs["bound"] <= 2.0 and pairs["stage"] == 1
    assert "generated into" in capsys.readouterr().out
