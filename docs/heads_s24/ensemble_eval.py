"""Box heads averaged: the scene model of the first checkpoint with a head that averages the box heads of all
the given checkpoints (deltas and objectness logits), evaluated (a throwaway script kept for the record).

    python docs/heads_s24/ensemble_eval.py OUT.json SCALE CHECKPOINT [CHECKPOINT ...]

Test split of the first checkpoint's data_root, 5 views, predicted boxes, box-delta scale SCALE.
"""
import json
import sys
from pathlib import Path

import torch
from torch import nn

from oddsparse.eval.evaluate import evaluate_detector
from oddsparse.models.detector import load_detector

torch.set_num_threads(1)
out, scale, checkpoints = Path(sys.argv[1]), float(sys.argv[2]), [Path(p) for p in sys.argv[3:]]


class Mean(nn.Module):
    def __init__(self, heads):
        super().__init__()
        self.heads = nn.ModuleList(heads)
        for name in ("in_channels", "inputs", "resolution", "context", "margin"):
            setattr(self, name, getattr(heads[0], name))

    def forward(self, volumes):
        outs = [h(volumes) for h in self.heads]
        return torch.stack([o[0] for o in outs]).mean(0), torch.stack([o[1] for o in outs]).mean(0)


detector, payload = load_detector(checkpoints[0])
detector.box_head = Mean([load_detector(c)[0].box_head for c in checkpoints])
detector.box_delta_scale = scale
report = evaluate_detector(detector, payload["data_root"], "test", views=[5], progress=False)
report["settings"].update(box_delta_scale=scale, heads=[str(c) for c in checkpoints])
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(report) + "\n")
print(out, report["object_AUROC"], report["box_recall"], report["box_precision"])
