"""Throwaway (session 22): box heads retrained on a final scene model's proposals, by start and length.

    python docs/delta_scale_s22/scripts/heads.py RUN OUTPARENT ARM [ARM ...]

ARM is ``fresh-STEPS-sSEED`` (a new head, ``STEPS`` steps, seed ``SEED``) or ``cont-STEPS-sSEED`` (the run's
final head trained on for ``STEPS`` steps). Every arm trains on every training scene's proposals of
RUN/final.pt (cached once in OUTPARENT/train_cache.pt) at the recipe's box-head batch and learning rate and
writes OUTPARENT/ARM/final.pt; evaluate each with ``oddsparse eval --views 5``.
"""
import sys, time, torch
from pathlib import Path
from oddsparse.data import SceneDataset
from oddsparse.models.detector import build_detector, load_detector
from oddsparse.train import engine
from oddsparse.utils.checkpoint import load_checkpoint, save_checkpoint

torch.set_num_threads(1)
run, parent, arms = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
parent.mkdir(parents=True, exist_ok=True)
payload = load_checkpoint(run / "final.pt")
cfg = payload["config"]
base, _ = load_detector(run / "final.pt")
cache_file = parent / "train_cache.pt"
if cache_file.is_file():
    cache = engine.ProposalCache(**torch.load(cache_file, weights_only=True))
else:
    train = SceneDataset(payload["data_root"], "train", num_input_views=cfg["input_views"], num_target_views=0,
                         image_size=tuple(payload["image_size"]), seed=cfg["seed"])
    t = time.time()
    cache = engine.cache_proposals(base, train, progress=False)
    torch.save(dict(cache.__dict__), cache_file)
    print("train cache", len(cache), "proposals", round(time.time() - t), "s", flush=True)
for arm in arms:
    kind, steps, seed = arm.split("-")
    steps, seed = int(steps), int(seed[1:])
    torch.manual_seed(seed)
    det = build_detector(payload["scene_kwargs"], payload["detector_kwargs"])
    state = payload["model"] if kind == "cont" else {k: v for k, v in payload["model"].items()
                                                     if not k.startswith("box_head.")}
    missing, unexpected = det.load_state_dict(state, strict=False)
    assert all(k.startswith("box_head.") for k in missing) and not unexpected
    t = time.time()
    engine.train_box_head_on_cache(det, cache, steps=steps, batch_size=cfg["box_head_batch"], lr=cfg["lr_box_head"],
                                   seed=seed, grad_clip=cfg["grad_clip"] or None, progress=False)
    out = parent / arm
    out.mkdir(exist_ok=True)
    save_checkpoint(out / "final.pt", dict(payload, model=det.state_dict()))
    print(arm, "trained", round(time.time() - t), "s ->", out / "final.pt", flush=True)
