"""Throwaway (session 22): final-box recall on the cached test proposals of head_breakdown.py when each head's box
deltas are scaled by alpha (0: the DBSCAN proposals themselves, objectness still applied; 1: the head as trained).

    python docs/delta_scale_s22/scripts/delta_scale.py CACHE_STEM OUT.json NAME=CHECKPOINT [...]
"""
import json, sys, torch
from oddsparse.models.detector import load_detector
from oddsparse.train import engine

torch.set_num_threads(1)
stem, out, heads = sys.argv[1], sys.argv[2], dict(a.split("=", 1) for a in sys.argv[3:])
records = {}
caches = {s: engine.ProposalCache(**torch.load(f"{stem}-{s}-cache.pt", weights_only=True)) for s in ("seen", "unseen")}



for name, path in heads.items():
    det, _ = load_detector(path)
    det.eval()
    row, records[name] = [], {}
    for alpha in (0.0, 0.25, 0.5, 0.75, 1.0):
        det.box_delta_scale = alpha  # (first run with a wrapper module scaling the head's deltas: the same)
        with torch.no_grad():
            r = {s: engine.box_recall_on_cache(det, c) for s, c in caches.items()}
        total = sum(v["matched"] for v in r.values()) / sum(v["num_gt"] for v in r.values())
        records[name][f"{alpha:g}"] = {"seen": r["seen"]["recall"], "unseen": r["unseen"]["recall"], "all": total}
        row.append(f"a={alpha:g}: {r['seen']['recall']:.3f}/{r['unseen']['recall']:.3f}/{total:.3f}")
    print(f"{name:<10} seen/unseen/all  " + "  ".join(row), flush=True)
with open(out, "w") as f:
    json.dump(records, f, indent=2)
