"""The benchmark scripts' own code paths (their figures come from running them, never from tests)."""
import importlib.util
import sys
from pathlib import Path

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
    folders, source = bench.find_scenes(recipe, cfg, 1, 5)
    assert "no recipe cache" in source and len(folders) == 1
    assert Path(folders[0]).parent == tmp_path / "generated"
    metadata = read_scene_metadata(folders[0])
    lo, hi = cfg.synthetic_objects
    assert metadata.num_views >= 5 and lo <= len(metadata.object_names) <= hi
