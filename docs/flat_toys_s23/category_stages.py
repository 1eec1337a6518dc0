"""Where a checkpoint loses one category's objects, stage by stage (a throwaway script kept for the record).

    python docs/flat_toys_s23/category_stages.py CHECKPOINT CATEGORY [--scenes N] [--data ROOT]

On the first N test scenes of CATEGORY (5 evenly spaced views, as `oddsparse eval --views 5`): GT objects, those
with a DBSCAN proposal of IoU > 0.5 (before the box head) and > 0.2, those whose best proposal the head keeps
(objectness >= threshold), and those with a final box of IoU > 0.5 at box-delta scales 1 and 0.25.
"""
import argparse
import json
from pathlib import Path

import torch

from oddsparse.eval.evaluate import read_scene_with_boxes
from oddsparse.geometry.boxes import box_iou_3d
from oddsparse.models.detector import load_detector
from oddsparse.utils.checkpoint import load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("category")
    parser.add_argument("--scenes", type=int, default=30)
    parser.add_argument("--data", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = args.data or Path(load_checkpoint(args.checkpoint, mmap=True)["data_root"])
    names = [n for n in json.loads((root / "splits.json").read_text())["test"] if n.split("_")[0] == args.category]
    detector, _ = load_detector(args.checkpoint)
    detector.eval()
    count = {"objects": 0, "proposal_iou>0.5": 0, "proposal_iou>0.2": 0, "proposals": 0, "kept": 0,
             "final_iou>0.5_scale1": 0, "final_iou>0.5_scale0.25": 0}
    objectness = []
    for name in names[:args.scenes]:
        scene, gt = read_scene_with_boxes(root / name, 5, (128, 128))
        with torch.no_grad():
            output = detector.scene_model(scene.images[None], scene.K[None].float(), scene.world_to_cam[None].float())
            proposals, index = detector.propose_boxes(output)
            count["objects"] += gt.center.shape[0]
            count["proposals"] += proposals.center.shape[0]
            if not len(index):
                continue
            iou = box_iou_3d(gt, proposals)  # (G, P)
            best = iou.max(dim=1)
            count["proposal_iou>0.5"] += int((best.values > 0.5).sum())
            count["proposal_iou>0.2"] += int((best.values > 0.2).sum())
            for scale in (1.0, 0.25):
                detector.box_delta_scale = scale
                boxes, _, probability = detector.refine_boxes(output, proposals, index, keep_all=True)
                kept = detector.kept_proposals(probability)
                if scale == 1.0:
                    count["kept"] += int(kept[best.indices[best.values > 0.2]].sum())
                    objectness += probability[best.indices[best.values > 0.2]].tolist()
                final = box_iou_3d(gt, type(boxes)(*(t[kept] for t in boxes))) if bool(kept.any()) else None
                if final is not None:
                    count[f"final_iou>0.5_scale{scale:g}"] += int((final.max(dim=1).values > 0.5).sum())
    count["median_objectness_of_matched"] = float(torch.tensor(objectness).median()) if objectness else None
    print(json.dumps({"checkpoint": str(args.checkpoint), "category": args.category,
                      "scenes": min(len(names), args.scenes), **count}))


if __name__ == "__main__":
    main()
