"""Device readiness: the library on an accelerator against the CPU, in one short run for a lent GPU.

Nothing in this repository had run on a GPU when this script was written: the CPU test suite cannot
say whether a tensor lands on the wrong device, whether a kernel rounds differently enough to move a
carved voxel or a DBSCAN cluster, or how fast a scene is read there. This script answers those in one
call of a few minutes (``benchmarks/device_run.sh`` is the call, with its set-up), each section
recorded in ``--out/device_check.json`` as it finishes (atomically), so that a run stopped by a time
limit keeps what it finished. Every section is timed and a failing one records its traceback and
lets the next run.

Sections:

- ``environment``: torch, the device, which optional backends import (spconv, torch-scatter,
  PyTorch3D).
- ``parity``: a small detector (the smoke preset's sizes, the dense backbone so that a machine without
  spconv runs it too) with random weights, its density raised so that carved voxels are objects
  (:func:`dense_carved_voxels`), on 2 generated scenes, computed three times: float64 on the CPU (the
  reference), float32 on the CPU, float32 on ``--device``. Compared: the stage-0, stage-1 and stage-2
  losses (GT-mask carving, no random half-turns) and every parameter's gradient; in eval mode the
  foreground logits, and with GT-mask carving the occupied voxels, the boxes found (DBSCAN, box head,
  consensus), the occupied-cell tokens and the anomaly logits of the GT boxes. An error is relative
  (``||a - b|| / ||b||``). A check passes when the device's error against the reference is at most
  ``10 x`` the CPU float32 error plus ``--tolerance`` (gradients parameter by parameter; counts must
  equal one of the CPU's): the device may round differently, not compute something else. TF32 is off
  for this section (``torch.backends.*.allow_tf32``), as it rounds matrix products to 10 bits.
- ``smoke``: the recipe's smoke preset trained on ``--device`` with the dense backbone (a subprocess),
  resumed for one more stage-2 step (its checkpoint loaded onto the device), then ``oddsparse eval``
  and ``oddsparse predict`` of its checkpoint on ``--device``.
- ``timing``: end-to-end inference of one scene (5 views), per stage, with the default and the paper's
  (``full``) configurations and random weights (carving with the GT masks and scoring the GT boxes, as
  ``bench_inference.py`` does without a checkpoint), on ``--device`` against the same on the CPU
  (``--threads`` threads); each stage's time is its minimum over ``--repeats`` passes, synchronised.
  TF32 as torch leaves it by default.

Run on a CPU (``--device cpu``) it checks its own plumbing: the float32-vs-float64 comparisons are
real there, the device ones repeat the CPU float32 run.

Last line: ``key=value`` pairs: each section's status, the worst parity ratio, the smoke run's seconds,
and per configuration the device's and the CPU's seconds per scene and their ratio.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_inference import STAGES, recipe_config, run_pipeline  # noqa: E402

from oddsparse.data import SceneDataset  # noqa: E402
from oddsparse.data.scene_io import read_scene  # noqa: E402
from oddsparse.data.synth import generate_dataset  # noqa: E402
from oddsparse.eval.evaluate import evenly_spaced_views  # noqa: E402
from oddsparse.geometry.boxes import YawBoxes  # noqa: E402
from oddsparse.models.detector import build_detector  # noqa: E402
from oddsparse.train import engine  # noqa: E402
from oddsparse.utils.checkpoint import atomic_write_bytes, load_checkpoint  # noqa: E402

SECTIONS = ("environment", "parity", "smoke", "timing")


# ------------------------------------------------------------------------------------------ comparisons
def relative_error(value, reference) -> float:
    """``|a - b| / |b|`` of two tensors (L2 norms; 0 when both are zero, inf when only the reference is)."""
    value, reference = value.detach().double().cpu(), reference.detach().double().cpu()
    if value.shape != reference.shape:
        return math.inf
    scale = float(reference.norm())
    diff = float((value - reference).norm())
    if scale == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / scale


def gradient_verdict(grads: dict, cpu_grads: dict, reference: dict, tolerance: float) -> dict:
    """:func:`verdict` per parameter gradient (a missing one fails); reports the parameter of the worst ratio."""
    worst = None
    for key, ref in reference.items():
        device_error = relative_error(grads[key], ref) if grads.get(key) is not None else math.inf
        cpu_error = relative_error(cpu_grads[key], ref) if cpu_grads.get(key) is not None else math.inf
        check = verdict(device_error, cpu_error, tolerance)
        if worst is None or check["ratio"] > worst["ratio"]:
            worst = dict(check, parameter=key)
    missing = sorted(set(grads) ^ set(reference))
    return dict(worst or verdict(0.0, 0.0, tolerance), parameters=len(reference), missing=missing,
                passed=bool(worst is None or worst["passed"]) and not missing)


def verdict(device_error: float, cpu_error: float, tolerance: float) -> dict:
    """Pass when the device's error is at most 10x the CPU float32 one plus ``tolerance``."""
    bound = 10.0 * cpu_error + tolerance
    return {"device_error": device_error, "cpu32_error": cpu_error, "bound": bound,
            "ratio": device_error / bound, "passed": bool(device_error <= bound)}


@contextlib.contextmanager
def strict_float32():
    """TF32 off for matrix products and cuDNN convolutions (restored afterwards)."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------ sections
def environment(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
            "cuda_available": torch.cuda.is_available(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2 ** 30, 1),
                    multiprocessors=props.multi_processor_count, cuda=torch.version.cuda)
    for module in ("spconv", "torch_scatter", "pytorch3d", "kornia", "trimesh", "embreex", "manifold3d", "OpenEXR"):
        try:
            importlib.import_module(module)
            info[module] = True
        except Exception as error:  # an optional backend: record why it is absent
            info[module] = f"{type(error).__name__}: {error}"[:200]
    return info


def _cast_batch(batch: engine.PreparedBatch, device: torch.device, dtype: torch.dtype) -> engine.PreparedBatch:
    """The batch on ``device`` with its floating tensors (cameras, depth, GT boxes) in ``dtype``."""
    def move(value):
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            return value.to(dtype) if value.is_floating_point() else value
        if isinstance(value, YawBoxes):
            return YawBoxes(*(move(t) for t in value))
        return value

    return engine.PreparedBatch(**{name: move(getattr(batch, name)) for name in batch.__dataclass_fields__})


def _parity_run(module, cfg, state: dict, batch: engine.PreparedBatch, teacher: torch.Tensor, device: torch.device,
                dtype: torch.dtype) -> dict:
    """Losses, gradients and eval outputs of the detector with weights ``state`` on ``device`` in ``dtype``."""
    detector = build_detector(*module.model_kwargs(cfg))
    detector.load_state_dict(state)
    detector = detector.to(device=device, dtype=dtype)
    batch = _cast_batch(batch, device, dtype)
    teacher = teacher.to(device=device, dtype=dtype)
    render = dict(render_size=(cfg.render_size,) * 2, feature_size=(cfg.feature_size,) * 2,
                  num_samples=cfg.num_samples, carve_from_gt=True, lambda_sigma=cfg.lambda_sigma,
                  lambda_f=cfg.lambda_f, lambda_d=cfg.lambda_d)
    losses = {
        "stage0": lambda: engine.foreground_pretrain_loss(detector.scene_model, batch)[0],
        "stage1": lambda: engine.stage1_loss(detector.scene_model, batch, teacher, **render)[0],
        "stage2": lambda: engine.stage2_loss(detector, batch, teacher, flip_boxes=False, **render)[0],
    }
    out = {}
    detector.train()
    for name, loss_fn in losses.items():
        detector.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        loss = loss_fn()
        loss.backward()
        out[name] = {"loss": loss.detach().cpu(),
                     "grads": {k: p.grad.detach().cpu() for k, p in detector.named_parameters() if p.grad is not None}}
    detector.eval()
    with torch.no_grad():
        foreground = detector.scene_model.encode(batch.images)[1]
        scene = detector.scene_model(batch.images, batch.K, batch.world_to_cam, carve_masks=batch.masks)
        boxes, _ = detector.find_boxes(scene)
        gt = detector(batch.images, batch.K, batch.world_to_cam, carve_masks=batch.masks,
                      boxes=(batch.gt_boxes, batch.gt_scene))
    out["eval"] = {"voxels": int(scene.occupancy.num_voxels), "boxes": int(boxes.center.shape[0]),
                   "tokens": int(gt.num_tokens.sum()), "box_centers": boxes.center.detach().cpu(),
                   "gt_logits": gt.logits.detach().cpu(), "foreground": foreground.detach().cpu()}
    return out


def dense_carved_voxels(detector, voxel_size: float) -> dict:
    """The detector's state with the density head's last bias raised so that every carved voxel starts at an
    opacity of about 0.9: random weights otherwise leave the density below the object threshold, so that no box
    is found and the matcher reads empty volumes (its attention untested)."""
    fields = detector.scene_model.fields
    last = [m for m in fields.density.modules() if isinstance(m, torch.nn.Linear)][-1]
    unit = -math.log(0.1) / voxel_size / fields.density_scale  # the softplus output giving that density
    with torch.no_grad():
        last.bias.fill_(unit + math.log(-math.expm1(-unit)))  # softplus^-1
    return detector.state_dict()


def parity(device: torch.device, folder: Path, tolerance: float) -> dict:
    module, _ = recipe_config()
    cfg = module.parse_config(["--preset", "smoke", "--backbone", "dense", "--device", "cpu"])
    root = folder / "parity-scenes"
    generate_dataset(root, "parts", scenes=2, seed=0, objects=tuple(cfg.synthetic_objects),
                     views=cfg.input_views + cfg.target_views, size=cfg.synthetic_size, workers=1, progress=False)
    dataset = SceneDataset(root, "all", family="parts", num_input_views=cfg.input_views,
                           num_target_views=cfg.target_views, image_size=(cfg.image_size,) * 2, seed=0)
    batch = engine.prepare_batch(engine.load_batch(dataset, [0, 1], [0, 0]), "cpu")
    torch.manual_seed(0)
    detector = build_detector(*module.model_kwargs(cfg))
    state = dense_carved_voxels(detector, cfg.voxel_size)
    teacher = torch.nn.functional.normalize(
        torch.randn(2 * cfg.target_views, cfg.feature_dim, cfg.feature_size, cfg.feature_size), dim=1)
    with strict_float32():
        runs = {(kind, str(dtype)): _parity_run(module, cfg, state, batch, teacher, dev, dtype)
                for kind, dev, dtype in (("cpu", torch.device("cpu"), torch.float64),
                                         ("cpu", torch.device("cpu"), torch.float32),
                                         ("device", device, torch.float32))}
    ref, cpu, dev = runs[("cpu", "torch.float64")], runs[("cpu", "torch.float32")], runs[("device", "torch.float32")]
    checks = {}
    for stage in ("stage0", "stage1", "stage2"):
        checks[f"{stage}_loss"] = verdict(relative_error(dev[stage]["loss"], ref[stage]["loss"]),
                                          relative_error(cpu[stage]["loss"], ref[stage]["loss"]), tolerance)
        checks[f"{stage}_grads"] = gradient_verdict(dev[stage]["grads"], cpu[stage]["grads"], ref[stage]["grads"],
                                                    tolerance)
    for name in ("foreground", "gt_logits"):
        checks[f"eval_{name}"] = verdict(relative_error(dev["eval"][name], ref["eval"][name]),
                                         relative_error(cpu["eval"][name], ref["eval"][name]), tolerance)
    for name in ("voxels", "boxes", "tokens"):  # counts: the device must find what the CPU in float32 or float64 finds
        counts = {"float64": ref["eval"][name], "cpu32": cpu["eval"][name], "device32": dev["eval"][name]}
        checks[f"eval_{name}"] = dict(counts, passed=counts["device32"] in (counts["float64"], counts["cpu32"]))
    if ref["eval"]["boxes"] == cpu["eval"]["boxes"] == dev["eval"]["boxes"]:  # the same boxes: where they lie
        checks["eval_box_centers"] = verdict(relative_error(dev["eval"]["box_centers"], ref["eval"]["box_centers"]),
                                             relative_error(cpu["eval"]["box_centers"], ref["eval"]["box_centers"]),
                                             tolerance)
    return {"checks": checks, "passed": all(c["passed"] for c in checks.values()),
            "worst_ratio": max(c.get("ratio", 0.0) for c in checks.values()),
            "config": f"smoke preset, dense backbone, grid {cfg.grid_shape}, {cfg.image_size} px, 2 scenes"}


def _run(command: list[str], log: Path, env: dict, timeout: float) -> float:
    """Run ``command`` with its output in ``log``; return its seconds; raise naming the log on failure."""
    start = time.perf_counter()
    with open(log, "w") as handle:
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO, timeout=timeout)
    if result.returncode:
        tail = log.read_text().splitlines()[-15:]
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode} (log {log}):\n" + "\n".join(tail))
    return time.perf_counter() - start


def smoke(device: torch.device, folder: Path, out: Path, timeout: float) -> dict:
    env = dict(os.environ, ODDSPARSE_CACHE=str(folder / "smoke-cache"), PYTHONPATH=os.pathsep.join(
        [str(REPO), os.environ.get("PYTHONPATH", "")]))
    run_dir = folder / "smoke-run"
    python = sys.executable
    train = [python, "recipes/train_partsad.py", "--preset", "smoke", "--backbone", "dense", "--device", device.type,
             "--out", str(run_dir)]
    seconds = {"train": _run(train, out / "smoke_train.log", env, timeout)}
    # one more stage-2 step: resumes stage 2 from its checkpoint (weights, optimizer, RNG) on the device
    steps = load_checkpoint(run_dir / "stage2.pt")["step"]
    seconds["resume"] = _run(train + ["--stage2_steps", str(steps + 1)], out / "smoke_resume.log", env, timeout)
    resumed = load_checkpoint(run_dir / "stage2.pt")["step"]
    if resumed != steps + 1:
        raise RuntimeError(f"resuming stage 2 for one more step left {run_dir / 'stage2.pt'} at step {resumed}, "
                           f"not {steps + 1}")
    checkpoint = run_dir / "final.pt"
    seconds["eval"] = _run([python, "-m", "oddsparse.cli", "eval", "--checkpoint", str(checkpoint), "--views", "2",
                            "--device", str(device), "--quiet", "--out", str(folder / "smoke-eval")],
                           out / "smoke_eval.log", env, timeout)
    scene = sorted(p.parent for p in (folder / "smoke-cache").rglob("scene3d.metadata.json"))[0]
    seconds["predict"] = _run([python, "-m", "oddsparse.cli", "predict", str(scene), "--checkpoint", str(checkpoint),
                               "--device", str(device), "--out", str(folder / "smoke-predict")],
                              out / "smoke_predict.log", env, timeout)
    report = json.loads((folder / "smoke-eval" / "report.json").read_text())
    overlays = sorted((folder / "smoke-predict").rglob("*.png"))
    if overlays:
        shutil.copy(overlays[0], out / "smoke_predict_overlay.png")
    return {"seconds": seconds, "object_AUROC": report.get("object_AUROC"), "scene": scene.name,
            "overlays": len(overlays)}


def _time_configuration(module, preset: str, device: torch.device, scenes: list, repeats: int) -> dict:
    """Seconds per scene by stage (min over passes, mean over scenes) of ``preset`` with random weights."""
    cfg = module.parse_config(["--preset", preset, "--backbone", "dense", "--device", "cpu"])
    torch.manual_seed(0)
    detector = build_detector(*module.model_kwargs(cfg)).eval().to(device)
    per_scene = []
    for scene in scenes:
        scene = scene.to(device)
        passes = []
        for repeat in range(repeats + 1):  # pass 0 warms up
            times, _ = run_pipeline(detector, scene, oracle=True, sync=lambda: synchronize(device))
            if repeat:
                passes.append(times)
        per_scene.append({s: min(p[s] for p in passes) for s in STAGES})
    stages = {s: sum(t[s] for t in per_scene) / len(per_scene) for s in STAGES}
    return {"total_s": sum(stages.values()), **{f"{s}_s": v for s, v in stages.items()}}


def timing(device: torch.device, folder: Path, repeats: int, presets: list[str]) -> dict:
    module, _ = recipe_config()
    results = {}
    for preset in presets:
        cfg = module.parse_config(["--preset", preset])
        root = folder / f"timing-{preset}"
        views = max(cfg.input_views, 5)
        folders = generate_dataset(root, "parts", scenes=1, seed=0, objects=(6, 6), views=views,
                                   size=cfg.image_size, workers=1, progress=False)
        scenes = [read_scene(f, views=evenly_spaced_views(views, 5), image_size=cfg.image_size) for f in folders]
        entry = {}
        for name, dev in (("device", device), ("cpu", torch.device("cpu"))):
            entry[name] = _time_configuration(module, preset, dev, scenes, repeats)
        entry["speedup"] = entry["cpu"]["total_s"] / entry["device"]["total_s"]
        results[preset] = entry
        print(f"timing {preset}: {entry['device']['total_s'] * 1000:.1f} ms per scene on {device}, "
              f"{entry['cpu']['total_s'] * 1000:.1f} ms on the CPU ({torch.get_num_threads()} threads): "
              f"{entry['speedup']:.1f}x", flush=True)
    return results


# ------------------------------------------------------------------------------------------ main
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="the accelerator to check (default cuda; cpu checks the "
                                                         "script itself)")
    parser.add_argument("--out", type=Path, required=True, help="folder for device_check.json and the logs")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--presets", nargs="+", default=["default", "full"], help="configurations to time")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per scene and configuration")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="absolute slack of the parity bound")
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed to each smoke subprocess")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False)")
    args.out.mkdir(parents=True, exist_ok=True)
    report_path = args.out / "device_check.json"
    report = {"sections": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="device-check-") as tmp:
        folder = Path(tmp)
        for section in args.sections:
            print(f"== {section}", flush=True)
            start = time.perf_counter()
            try:
                if section == "environment":
                    result = environment(device)
                elif section == "parity":
                    result = parity(device, folder, args.tolerance)
                elif section == "smoke":
                    result = smoke(device, folder, args.out, args.timeout)
                else:
                    result = timing(device, folder, args.repeats, args.presets)
                status = "failed" if result.get("passed") is False else "ok"
            except Exception as error:  # keep going: the next section may still tell something
                result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
                status = "error"
                print(result["traceback"], file=sys.stderr, flush=True)
            result["status"], result["wall_s"] = status, time.perf_counter() - start
            report["sections"][section] = result
            atomic_write_bytes(report_path, json.dumps(report, indent=1, default=str).encode())
            print(f"{section}: {status} ({result['wall_s']:.1f} s)", flush=True)
            if section == "parity" and "checks" in result:
                for name, check in result["checks"].items():
                    print(f"  {name}: {'ok' if check['passed'] else 'FAILED'} "
                          + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in check.items() if k != "passed"), flush=True)
    sections = report["sections"]
    pairs = {f"{name}": sections[name]["status"] for name in sections}
    if "checks" in sections.get("parity", {}):
        pairs["parity_worst_ratio"] = sections["parity"]["worst_ratio"]
    if "seconds" in sections.get("smoke", {}):
        pairs["smoke_train_s"] = sections["smoke"]["seconds"]["train"]
    for preset, entry in (sections.get("timing", {}) if sections.get("timing", {}).get("status") == "ok"
                          else {}).items():
        if isinstance(entry, dict) and "device" in entry:
            pairs.update({f"{preset}_device_s": entry["device"]["total_s"], f"{preset}_cpu_s": entry["cpu"]["total_s"],
                          f"{preset}_speedup": entry["speedup"]})
    pairs["wall_s"] = time.perf_counter() - started
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in pairs.items()))
    return report


if __name__ == "__main__":
    main()
