"""Throwaway (session 22): can held-out training categories choose the box-delta scale? A fresh head trained on
the final model's training proposals without two categories (1500 steps, as stage 1b), its final-box recall on
those two categories' proposals for each delta scale.

    python docs/delta_scale_s22/scripts/heldout_scale.py RUN TRAIN_CACHE CAT1,CAT2 SEED
"""
import sys, torch
from pathlib import Path
from oddsparse.data import SceneDataset
from oddsparse.models.detector import build_detector
from oddsparse.train import engine
from oddsparse.utils.checkpoint import load_checkpoint

torch.set_num_threads(1)
run, cache_file, held, seed = Path(sys.argv[1]), sys.argv[2], sys.argv[3].split(","), int(sys.argv[4])
payload = load_checkpoint(run / "final.pt")
cfg = payload["config"]
cache = engine.ProposalCache(**torch.load(cache_file, weights_only=True))
train = SceneDataset(payload["data_root"], "train", num_input_views=5, num_target_views=0)
category = [f.name.split("_")[0] for f in train.scenes]
held_scenes = torch.tensor([i for i, c in enumerate(category) if c in held])
is_held = torch.isin(cache.scene, held_scenes)
fit, val = cache.rows(~is_held), cache.rows(is_held)
print("held out", held, "scenes", len(held_scenes), "proposals", len(val), "of", len(cache), flush=True)
torch.manual_seed(seed)
det = build_detector(payload["scene_kwargs"], payload["detector_kwargs"])
det.load_state_dict({k: v for k, v in payload["model"].items() if not k.startswith("box_head.")}, strict=False)
engine.train_box_head_on_cache(det, fit, steps=1500, batch_size=cfg["box_head_batch"], lr=cfg["lr_box_head"],
                               seed=seed, grad_clip=cfg["grad_clip"] or None, progress=False)



det.eval()
row = []
for alpha in (0.0, 0.25, 0.5, 0.75, 1.0):
    det.box_delta_scale = alpha  # (first run with a wrapper module scaling the head's deltas: the same)
    with torch.no_grad():
        row.append(f"a={alpha:g}: {engine.box_recall_on_cache(det, val)['recall']:.3f}")
print("held-out", ",".join(held), "seed", seed, "recall  " + "  ".join(row), flush=True)
