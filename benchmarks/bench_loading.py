"""Training steps with the next batches read by a background thread (``prefetch``) against reading each in its step.

A recipe step reads its batch (PNG and EXR decoding, masks, collation: :func:`~oddsparse.train.engine.load_batch`)
and then computes; :func:`~oddsparse.train.engine.train_stage` with ``prefetch=1`` (the recipes'
``--prefetch_batches 1``; off by default) reads the next batch in a background thread meanwhile. This script measures, for one
preset and stage, with random weights:

- ``read_s``: reading one batch alone (load + :func:`~oddsparse.train.engine.prepare_batch`), mean over the steps;
- ``compute_s``: one step on an already read batch (forward, backward, Adam), minimum over the steps;
- ``step_s`` without and with prefetching: ``train_stage``'s loop (:func:`~oddsparse.train.engine.training_batches`,
  then the step; without its checkpoints and logging) over ``--steps`` steps after one warm-up step, seconds per
  step, the two loops taking turns ``--repeats`` times (best of each), so that both see the same machine load.
  Their ratio is the speedup; ``(read_s + compute_s) / max(read_s, compute_s)`` bounds it.

Scenes: the recipe's synthetic cache of the preset when it exists (its training split), otherwise ``--scenes``
generated into a temporary folder. Stage 1 uses random teacher features (the recipe caches them per scene).

Last line: ``read_s=... compute_s=... step_s=... prefetch_step_s=... speedup=... bound=... preset=... stage=...
threads=... device=...``.

    python benchmarks/bench_loading.py [--preset default] [--stage 0] [--steps 6] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_inference import recipe_config  # noqa: E402

from oddsparse.data import SceneDataset  # noqa: E402
from oddsparse.data.synth import generate_dataset  # noqa: E402
from oddsparse.models.detector import build_detector  # noqa: E402
from oddsparse.train import engine  # noqa: E402


def scene_root(module, cfg, scenes: int, folder: Path) -> tuple[Path, str]:
    """The recipe's cache of this preset when generated, else ``scenes`` scenes generated into ``folder``."""
    root = module.synthetic_root(cfg, "parts")
    if (root / "splits.json").is_file():
        return root, f"recipe cache {root}"
    generate_dataset(folder, "parts", scenes=scenes, seed=cfg.seed, objects=tuple(cfg.synthetic_objects),
                     views=cfg.synthetic_views, size=cfg.synthetic_size, workers=1, progress=False)
    return folder, f"{scenes} scenes generated into {folder} (no recipe cache at {root})"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="default", help="recipe preset (default, fine, full, smoke)")
    parser.add_argument("--stage", type=int, choices=(0, 1), default=0, help="0: segmentation, 1: scene model")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per loop")
    parser.add_argument("--repeats", type=int, default=2, help="loops of each kind, taking turns")
    parser.add_argument("--scenes", type=int, default=8, help="scenes to generate when there is no recipe cache")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    args, recipe_args = parser.parse_known_args(argv)  # the rest: recipe options
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    module, _ = recipe_config()
    cfg = module.parse_config(["--preset", args.preset, *recipe_args])
    batch_size = cfg.foreground_batch if args.stage == 0 else cfg.batch_size
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-loading-") as tmp:
        root, where = scene_root(module, cfg, args.scenes, Path(tmp) / "scenes")
        split = "train" if (root / "splits.json").is_file() else "all"
        dataset = SceneDataset(root, split, family="parts", num_input_views=cfg.input_views,
                               num_target_views=cfg.target_views, image_size=(cfg.image_size,) * 2, seed=cfg.seed)
        torch.manual_seed(cfg.seed)
        detector = build_detector(*module.model_kwargs(cfg)).to(device)
        state = {k: v.clone() for k, v in detector.state_dict().items()}
        features = None
        if args.stage == 0:
            objective = engine.ForegroundObjective(detector.scene_model)
        else:
            objective = engine.Stage1Objective(detector.scene_model, render_size=(cfg.render_size,) * 2,
                                               feature_size=(cfg.feature_size,) * 2, num_samples=cfg.num_samples,
                                               carve_from_gt=True, lambda_sigma=cfg.lambda_sigma,
                                               lambda_f=cfg.lambda_f, lambda_d=cfg.lambda_d)
            features = torch.nn.functional.normalize(torch.randn(
                batch_size * cfg.target_views, cfg.feature_dim, cfg.feature_size, cfg.feature_size, device=device),
                dim=1)

        def teacher(batch):  # the stage-1 teacher's features (random: the recipe caches them per scene)
            return None if features is None else features[:batch.batch_size * cfg.target_views]

        print(f"preset {args.preset}, stage {args.stage}, batch {batch_size}, {cfg.input_views} + "
              f"{cfg.target_views} views at {cfg.image_size} px; scenes: {where}; torch threads "
              f"{torch.get_num_threads()}, {device}", flush=True)

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        reads, computes = [], []
        optimizer = torch.optim.Adam(objective.parameters(), lr=1e-4)
        for step in range(args.steps + 1):
            start = time.perf_counter()
            indices, epochs = engine.batch_indices(step, num_items=len(dataset), batch_size=batch_size, seed=cfg.seed)
            batch = engine.prepare_batch(engine.load_batch(dataset, indices, epochs), device)
            sync()
            reads.append(time.perf_counter() - start)
            start = time.perf_counter()
            loss, _ = objective(batch, teacher(batch))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sync()
            computes.append(time.perf_counter() - start)
        read_s, compute_s = sum(reads[1:]) / args.steps, min(computes[1:])

        def loop(prefetch: int) -> float:
            """Seconds per step of the training loop over ``training_batches`` (train_stage's loop without its
            checkpoints and logging), after one warm-up step."""
            batches = engine.training_batches(dataset, start=0, steps=args.steps + 1, batch_size=batch_size,
                                              seed=cfg.seed, prefetch=prefetch)
            for step, batch in enumerate(batches):
                if step == 1:
                    sync()
                    start = time.perf_counter()
                batch = engine.prepare_batch(batch, device)
                loss, _ = objective(batch, teacher(batch))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            sync()
            return (time.perf_counter() - start) / args.steps

        loops = {0: [], 1: []}
        for repeat in range(args.repeats):
            for prefetch in (0, 1):
                detector.load_state_dict(state)
                optimizer = torch.optim.Adam(objective.parameters(), lr=1e-4)
                loops[prefetch].append(loop(prefetch))
                print(f"  loop {repeat}, prefetch {prefetch}: {loops[prefetch][-1]:.3f} s/step", flush=True)
    step_s, prefetch_step_s = min(loops[0]), min(loops[1])
    bound = (read_s + compute_s) / max(read_s, compute_s)
    print(f"reading a batch {read_s:.3f} s, computing a step {compute_s:.3f} s; a step {step_s:.3f} s, with "
          f"prefetching {prefetch_step_s:.3f} s ({step_s / prefetch_step_s:.2f}x, at most {bound:.2f}x); load average "
          f"{os.getloadavg()[0]:.1f}; wall {time.perf_counter() - started:.0f} s")
    pairs = {"read_s": read_s, "compute_s": compute_s, "step_s": step_s, "prefetch_step_s": prefetch_step_s,
             "speedup": step_s / prefetch_step_s, "bound": bound, "preset": args.preset, "stage": args.stage,
             "threads": torch.get_num_threads(), "device": device.type, "load_avg": os.getloadavg()[0]}
    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in pairs.items()))
    return pairs


if __name__ == "__main__":
    main()
