"""The real published scene through a checkpoint, stage by stage (a throwaway script kept for the record).

    python docs/flat_toys_s23/real_stages.py --checkpoint RUN/final.pt [RUN2/box_head.pt ...] --out FILE.json

For each checkpoint: the scene model on the real scene's 5 evenly spaced input views at the checkpoint's image
size, the DBSCAN proposals (sizes, IoU with the observed GT boxes), the box head's objectness and the IoU of the
boxes it makes at box-delta scales 1, 0.5 and 0.25, and the boxes kept at the detector's own setting.
"""
import argparse
import json
from pathlib import Path

import torch

from oddsparse.eval.evaluate import read_scene_with_boxes
from oddsparse.geometry.boxes import box_iou_3d
from oddsparse.models.detector import load_detector

SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "toysad_sample" / "banana_028-sample"


def stages(path: Path, views: int = 5) -> dict:
    detector, checkpoint = load_detector(path)
    detector.eval()
    size = int(checkpoint["config"].get("image_size", 128)) if "config" in checkpoint else 128
    scene, gt = read_scene_with_boxes(SAMPLE, views, (size, size), box_source="observed")
    with torch.no_grad():
        output = detector.scene_model(scene.images[None], scene.K[None].float(), scene.world_to_cam[None].float())
        carved = int((output.occupancy.feats[:, 0] > 0).sum())
        proposals, index = detector.propose_boxes(output)
        row = {"checkpoint": str(path), "carved_voxels": carved, "proposals": int(proposals.center.shape[0]),
               "proposal_size": proposals.size.tolist(), "gt_size": gt.size.tolist(),
               "proposal_iou": box_iou_3d(proposals, gt).max(dim=1).values.tolist() if len(index) else []}
        if detector.box_head is not None and len(index):
            own = detector.box_delta_scale
            for scale in (1.0, 0.5, 0.25):
                detector.box_delta_scale = scale
                boxes, _, probability = detector.refine_boxes(output, proposals, index, keep_all=True)
                row[f"scale_{scale}"] = {"objectness": probability.tolist(),
                                         "iou": box_iou_3d(boxes, gt).max(dim=1).values.tolist()}
            detector.box_delta_scale = own
            boxes, _ = detector.find_boxes(output)
            row["kept"] = {"delta_scale": own, "count": int(boxes.center.shape[0]),
                           "iou": box_iou_3d(boxes, gt).max(dim=1).values.tolist() if boxes.center.shape[0] else []}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", nargs="+", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [stages(p) for p in args.checkpoint]
    for row in rows:
        print(json.dumps({k: (([round(x, 3) for x in v] if v and isinstance(v[0], float) else v)
                              if isinstance(v, list) else v) for k, v in row.items()}))
    args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
