"""Throwaway (session 21): fresh box heads (all inputs / geometry only) trained 1500 steps on the final scene model's
proposals of runs/toys-env-s21/full; run from the repository root: python docs/envbg_s21/fresh_heads.py [threads] [seed]
(the geometry-only arm: inputs "geometry" in the loop)."""
import sys, time, torch
from pathlib import Path
from oddsparse.data import SceneDataset
from oddsparse.models.detector import build_detector, load_detector
from oddsparse.train import engine
from oddsparse.utils.checkpoint import load_checkpoint, save_checkpoint
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
SEED = int(sys.argv[2]) if len(sys.argv) > 2 else 0
run = Path("runs/toys-env-s21/full")
root = Path.home() / ".cache/oddsparse/synthetic/toys-128px-1200-seed0-o3-6-v12-env-g2"
payload = load_checkpoint(run / "final.pt")
base, _ = load_detector(run / "final.pt")
size = tuple(payload["image_size"])
train = SceneDataset(root, "train", num_input_views=5, num_target_views=0, image_size=size, seed=0)
t = time.time()
cache = engine.cache_proposals(base, train, progress=False)
print("final-model train cache", len(cache), round(time.time() - t), "s", flush=True)
for inputs in ("all",):
    kwargs = dict(payload["detector_kwargs"], box_head_inputs=inputs)
    torch.manual_seed(SEED)
    det = build_detector(payload["scene_kwargs"], kwargs)
    state = {k: v for k, v in payload["model"].items() if not k.startswith("box_head.")}
    missing, unexpected = det.load_state_dict(state, strict=False)
    assert all(k.startswith("box_head.") for k in missing) and not unexpected
    t = time.time()
    engine.train_box_head_on_cache(det, cache, steps=1500, batch_size=64, lr=1e-3, seed=SEED, grad_clip=1.0, progress=False)
    out = run.parent / f"full-head-{inputs}-seed{SEED}"
    out.mkdir(exist_ok=True)
    save_checkpoint(out / "final.pt", dict(payload, detector_kwargs=kwargs, model=det.state_dict()))
    print(inputs, "head trained", round(time.time() - t), "s ->", out / "final.pt", flush=True)
