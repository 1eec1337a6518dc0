"""Throwaway (session 22): where each box head loses the test objects of a run, on cached test proposals.

    python docs/delta_scale_s22/scripts/head_breakdown.py RUN OUT.json NAME=CHECKPOINT [NAME=CHECKPOINT ...]

Caches the DBSCAN proposals of RUN/final.pt's scene model on the seen and unseen test scenes (5 views, as
``oddsparse eval --views 5`` draws them is not promised: the dataset's own draw of seed 0), then for each checkpoint
(the same scene model, another box head) counts, per split: GT objects with a proposal (Hungarian at IoU 0.2, as
stage 1b matches), those whose proposal the head keeps (objectness >= threshold), those whose kept box has IoU
> 0.5 with the GT after the head's deltas (and before them, the raw proposal), and the final-box recall
(``box_recall_on_cache``: threshold, scene consensus, IoU 0.5).
"""
import json, sys, torch
from pathlib import Path
from oddsparse.data import SceneDataset
from oddsparse.geometry.boxes import YawBoxes, box_iou_3d
from oddsparse.models.detector import load_detector
from oddsparse.train import engine
from oddsparse.utils.checkpoint import load_checkpoint

torch.set_num_threads(1)
run, out, heads = Path(sys.argv[1]), Path(sys.argv[2]), dict(a.split("=", 1) for a in sys.argv[3:])
payload = load_checkpoint(run / "final.pt", mmap=True)
base, _ = load_detector(run / "final.pt")
caches = {}
for split in ("seen", "unseen"):
    file = out.parent / f"{out.stem}-{split}-cache.pt"
    if file.is_file():
        caches[split] = engine.ProposalCache(**torch.load(file, weights_only=True))
        continue
    data = SceneDataset(payload["data_root"], split, num_input_views=5, num_target_views=0,
                        image_size=tuple(payload["image_size"]), seed=0)
    caches[split] = engine.cache_proposals(base, data, progress=False)
    torch.save(dict(caches[split].__dict__), file)


def boxes(t):
    return YawBoxes(t[:, :3].float(), t[:, 3:6].float(), t[:, 6].float())


def paired_iou(a, b, chunk=64):
    """IoU of a[i] with b[i] (box_iou_3d is pairwise: its diagonal, block by block)."""
    n = a.center.shape[0]
    return torch.cat([box_iou_3d(YawBoxes(*(t[i:i + chunk] for t in a)), YawBoxes(*(t[i:i + chunk] for t in b))).diagonal()
                      for i in range(0, n, chunk)]) if n else torch.zeros(0)


records = {}
for name, path in heads.items():
    det, _ = load_detector(path)
    det.eval()
    records[name] = {}
    for split, cache in caches.items():
        with torch.no_grad():
            refined, _, probability = det.refine_from_volumes(boxes(cache.proposals), cache.scene, cache.volumes,
                                                              keep_all=True, chunk=256)
            m = cache.matched
            target = boxes(cache.targets[m])
            kept = probability[m] >= det.objectness_threshold
            iou_after = paired_iou(YawBoxes(*(t[m] for t in refined)), target)
            iou_before = paired_iou(boxes(cache.proposals[m]), target)
            recall = engine.box_recall_on_cache(det, cache)
        records[name][split] = dict(
            num_gt=int(cache.gt_scene.numel()), with_proposal=int(m.sum()), kept=int(kept.sum()),
            kept_iou_over_half=int((kept & (iou_after > 0.5)).sum()), proposal_iou_over_half=int((iou_before > 0.5).sum()),
            any_iou_over_half_after=int((iou_after > 0.5).sum()), final_recall=recall["recall"],
            final_boxes=recall["num_boxes"])
        r = records[name][split]
        print(f"{name:<14} {split:<7} GT {r['num_gt']} with proposal {r['with_proposal']} kept {r['kept']} "
              f"kept&IoU>0.5 {r['kept_iou_over_half']} (proposal IoU>0.5 {r['proposal_iou_over_half']}, after deltas "
              f"{r['any_iou_over_half_after']}) final recall {r['final_recall']:.3f} boxes {r['final_boxes']}", flush=True)
out.write_text(json.dumps(records, indent=2) + "\n")
