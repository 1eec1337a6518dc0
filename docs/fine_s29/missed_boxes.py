"""Every GT object the detector's final boxes miss, and how (session 29).

    python docs/fine_s29/missed_boxes.py runs/parts-fine/final.pt docs/fine_s29/reports/predicted.json

For the test scenes where the eval report (second argument) misses a GT object, prints each GT object whose
best final box has IoU <= 0.5: its type, that box's IoU, centre offset (cm), yaw error (degrees, modulo pi),
the GT and box sizes (cm), the scene's box / GT / proposal counts, and the GT object's best DBSCAN proposal
(IoU, and the box head's objectness: below the checkpoint's threshold, the head dropped it). About a minute.
"""
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from oddsparse.eval.evaluate import read_scene_with_boxes  # noqa: E402
from oddsparse.geometry.boxes import box_iou_3d  # noqa: E402
from oddsparse.models.detector import canonical_boxes, load_detector  # noqa: E402



def cm(values) -> list:
    """Centimetres to one decimal, for printing."""
    return [round(float(v), 1) for v in values]


torch.set_num_threads(2)
detector, checkpoint = load_detector(sys.argv[1])
detector.eval()
root, size = Path(checkpoint["data_root"]), tuple(int(v) for v in checkpoint["image_size"])
report = json.loads(Path(sys.argv[2]).read_text())["per_scene"]
for row in report:
    if row["num_matched"] == row["num_objects"]:
        continue
    scene, gt = read_scene_with_boxes(root / row["name"], 5, size, "metadata")
    with torch.no_grad():
        output = detector.scene_model(scene.images[None], scene.K[None], scene.world_to_cam[None])
        boxes, _, proposals, proposal_scene, _ = detector.find_boxes(output, return_proposals=True)
        objectness = detector.refine_boxes(output, proposals, proposal_scene, keep_all=True)[2]
    boxes = canonical_boxes(boxes)
    iou = box_iou_3d(gt, boxes)
    proposal_iou = box_iou_3d(gt, canonical_boxes(proposals))
    for g, kind in enumerate(scene.anomaly_types):
        p = int(proposal_iou[g].argmax()) if proposal_iou.shape[1] else -1
        best_proposal = (f"best proposal IoU {float(proposal_iou[g, p]):.2f} objectness {float(objectness[p]):.2f}"
                         if p >= 0 else "no proposal")
        if not boxes.center.shape[0]:  # the scene ends with no box at all
            print(f"{row['name']} {kind or 'normal':6s} no box boxes/GT/proposals 0/{gt.center.shape[0]}/"
                  f"{proposals.center.shape[0]} {best_proposal}")
            continue
        best = int(iou[g].argmax())
        if float(iou[g, best]) > 0.5:
            continue
        offset = (boxes.center[best] - gt.center[g]).numpy() * 100
        yaw = math.degrees((float(boxes.yaw[best] - gt.yaw[g]) + math.pi / 2) % math.pi - math.pi / 2)
        print(f"{row['name']} {kind or 'normal':6s} IoU {float(iou[g, best]):.2f} centre {cm(offset)} "
              f"yaw {yaw:+.0f} GT size {cm(gt.size[g] * 100)} box size "
              f"{cm(boxes.size[best] * 100)} boxes/GT/proposals {boxes.center.shape[0]}/"
              f"{gt.center.shape[0]}/{proposals.center.shape[0]} {best_proposal}")
