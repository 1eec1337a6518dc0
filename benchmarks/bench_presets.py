"""Training-step cost of the recipe's ``fine`` preset against its ``default`` preset, on this machine.

The ``fine`` preset (``recipes/train_partsad.py``) is the default recipe at the resolution the GT
oracles ask for (1 cm voxels, 256 px images and scenes, 128 px renders); it is meant for a GPU. This
script measures what one of its training steps costs here, as a ratio against the ``default`` preset
measured in the same run, and what the two presets' stage-0 and stage-1 lengths would then take.

For each preset: ``--scenes`` parts scenes generated at the preset's ``synthetic_size`` into a
temporary folder (``input_views + target_views`` stored views each, objects per the preset), the
recipe's detector with random weights (``model_kwargs``), and one batch of the preset's sizes:

- ``stage0``: :func:`~oddsparse.train.engine.foreground_pretrain_loss` forward, backward and an Adam
  step on ``foreground_batch`` scenes;
- ``stage1``: :func:`~oddsparse.train.engine.stage1_loss` (carving with the GT masks, so that random
  weights carve the objects as a trained model does; colour, mask and feature renders) forward,
  backward and an Adam step on ``batch_size`` scenes. The teacher's features are random maps of the
  right shape: the recipe caches them per scene, so they cost nothing per step.

Other options are recipe options applied to both presets (``--backbone dense``: the dense Conv3d
twin of the sparse U-Net, for a machine without spconv).

Method: ``torch.set_num_threads(--threads)``; one warm-up step, then ``--repeats`` timed steps of
each kind; a step's time is its minimum (the least disturbed); peak resident memory (``VmHWM``,
reset after set-up) over both kinds, or with ``--device cuda`` the GPU's peak allocated memory
(steps synchronised). Est. hours = ``foreground_steps * stage0 + stage1_steps * stage1`` of each
preset (the two stages that dominate the recipe's time here).

Last line: ``stage0_default_s=... stage0_fine_s=... stage1_default_s=... stage1_fine_s=...
stage0_ratio=... stage1_ratio=... peak_default_mb=... peak_fine_mb=... hours_default=... hours_fine=...
threads=... device=...``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _memory import peak_rss_bytes, reset_peak_rss  # noqa: E402
from bench_inference import recipe_config  # noqa: E402

from oddsparse.data import SceneDataset  # noqa: E402
from oddsparse.data.synth import generate_dataset  # noqa: E402
from oddsparse.models.detector import build_detector  # noqa: E402
from oddsparse.train import engine  # noqa: E402


def _timed(step, repeats: int, device: torch.device) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def measure(module, preset: str, scenes: int, repeats: int, folder: Path, device: torch.device,
            recipe_args: list[str]) -> dict:
    """Per-step seconds of stage 0 and stage 1 and the peak memory of ``preset`` (resident on a CPU, allocated on
    a GPU)."""
    cfg = module.parse_config(["--preset", preset, *recipe_args])
    root = folder / preset
    generate_dataset(root, "parts", scenes=scenes, seed=cfg.seed, objects=tuple(cfg.synthetic_objects),
                     views=cfg.input_views + cfg.target_views, size=cfg.synthetic_size, workers=1, progress=False)
    dataset = SceneDataset(root, "all", family="parts", num_input_views=cfg.input_views,
                           num_target_views=cfg.target_views, image_size=(cfg.image_size,) * 2, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    detector = build_detector(*module.model_kwargs(cfg)).to(device).train()
    scene_model = detector.scene_model
    optimizer = torch.optim.Adam(scene_model.parameters(), lr=cfg.lr)

    def batch_of(size: int):
        indices = [i % len(dataset) for i in range(size)]
        return engine.prepare_batch(engine.load_batch(dataset, indices, [0] * size), device)

    batch0, batch1 = batch_of(cfg.foreground_batch), batch_of(cfg.batch_size)
    teacher = torch.randn(cfg.batch_size * cfg.target_views, cfg.feature_dim, cfg.feature_size, cfg.feature_size,
                          device=device)
    teacher = torch.nn.functional.normalize(teacher, dim=1)

    def stage0():
        optimizer.zero_grad(set_to_none=True)
        loss, _ = engine.foreground_pretrain_loss(scene_model, batch0)
        loss.backward()
        optimizer.step()

    def stage1():
        optimizer.zero_grad(set_to_none=True)
        loss, _ = engine.stage1_loss(scene_model, batch1, teacher, render_size=(cfg.render_size,) * 2,
                                     feature_size=(cfg.feature_size,) * 2, num_samples=cfg.num_samples,
                                     carve_from_gt=True, lambda_sigma=cfg.lambda_sigma, lambda_f=cfg.lambda_f,
                                     lambda_d=cfg.lambda_d)
        loss.backward()
        optimizer.step()

    reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = {"stage0": _timed(stage0, repeats, device), "stage1": _timed(stage1, repeats, device)}
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss_bytes()
    result["peak_mb"] = peak / 2 ** 20
    result["hours"] = (cfg.foreground_steps * result["stage0"] + cfg.stage1_steps * result["stage1"]) / 3600
    result["config"] = (f"{cfg.backbone} grid {'x'.join(map(str, cfg.grid_shape))} of {cfg.voxel_size * 100:g} cm, "
                        f"{cfg.image_size} px images, {cfg.render_size} px renders, {cfg.num_samples} samples, "
                        f"batches {cfg.foreground_batch} / {cfg.batch_size}")
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=2, help="generated scenes per preset (batches repeat them)")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps of each kind")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (a GPU's allocated peak instead of the RSS)")
    args, recipe_args = parser.parse_known_args(argv)  # the rest: recipe options applied to both presets
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    module, _ = recipe_config()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for preset in ("default", "fine"):
            results[preset] = measure(module, preset, args.scenes, args.repeats, Path(folder), device, recipe_args)
            r = results[preset]
            print(f"{preset:8s} {r['config']}: stage 0 {r['stage0']:.2f} s/step, stage 1 {r['stage1']:.2f} s/step, "
                  f"peak {r['peak_mb']:.0f} MB, stages 0 + 1 about {r['hours']:.1f} h on this {device.type}", flush=True)
    d, f = results["default"], results["fine"]
    pairs = {"stage0_default_s": d["stage0"], "stage0_fine_s": f["stage0"], "stage1_default_s": d["stage1"],
             "stage1_fine_s": f["stage1"], "stage0_ratio": f["stage0"] / d["stage0"],
             "stage1_ratio": f["stage1"] / d["stage1"], "peak_default_mb": d["peak_mb"], "peak_fine_mb": f["peak_mb"],
             "hours_default": d["hours"], "hours_fine": f["hours"], "threads": args.threads, "device": device.type}
    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in pairs.items()))
    return pairs


if __name__ == "__main__":
    main()
