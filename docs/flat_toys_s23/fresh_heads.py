"""Fresh box heads on the flat-toys run's final scene model (a throwaway script kept for the record).

    python docs/flat_toys_s23/fresh_heads.py SEED INPUTS   # INPUTS: all or geometry

Caches the final scene model's DBSCAN proposals on the 719 training scenes once (runs/toys-flat-s23/train-cache.pt),
trains a new head on them as stage 1b trains (1500 steps, batch 64, lr 1e-3, torch seed SEED) and writes a copy of
final.pt with only the head replaced to runs/toys-flat-s23/head-INPUTS-seedSEED/final.pt (for category_stages.py).
"""
import sys
from pathlib import Path

import torch

from oddsparse.data import SceneDataset
from oddsparse.models.detector import build_detector, load_detector
from oddsparse.train import engine
from oddsparse.utils.checkpoint import load_checkpoint, save_checkpoint

torch.set_num_threads(1)
seed, inputs = int(sys.argv[1]), sys.argv[2]
run = Path("runs/toys-flat-s23/full")
payload = load_checkpoint(run / "final.pt")
file = run.parent / "train-cache.pt"
if file.is_file():
    cache = engine.ProposalCache(**torch.load(file, weights_only=True))
else:
    base, _ = load_detector(run / "final.pt")
    train = SceneDataset(payload["data_root"], "train", num_input_views=5, num_target_views=0,
                         image_size=tuple(payload["image_size"]), seed=0)
    cache = engine.cache_proposals(base, train, progress=False)
    torch.save(dict(cache.__dict__), file)
print("training proposals", len(cache), flush=True)
torch.manual_seed(seed)
detector = build_detector(payload["scene_kwargs"], dict(payload["detector_kwargs"], box_head_inputs=inputs))
state = {k: v for k, v in payload["model"].items() if not k.startswith("box_head.")}
missing, unexpected = detector.load_state_dict(state, strict=False)
assert all(k.startswith("box_head.") for k in missing) and not unexpected
engine.train_box_head_on_cache(detector, cache, steps=1500, batch_size=64, lr=1e-3, seed=seed, grad_clip=1.0,
                               progress=False)
out = run.parent / f"head-{inputs}-seed{seed}"
out.mkdir(exist_ok=True)
save_checkpoint(out / "final.pt", dict(payload, model=detector.state_dict(),
                                       detector_kwargs=dict(payload["detector_kwargs"], box_head_inputs=inputs)))
print("wrote", out / "final.pt")
