"""recipes/report_registration.py end to end on a tiny checkpoint: JSON, figure, distances only lowered."""
import json

import numpy as np
import torch

from recipe_loader import load_recipe
from reference_eval import tiny_checkpoint


def test_report_registration_end_to_end(tmp_path_factory, tmp_path, monkeypatch):
    module = load_recipe("report_registration")
    root, path = tiny_checkpoint(tmp_path_factory, tmp_path)
    out = tmp_path / "registration"
    calls, real = [], module.register_scene

    def recording(detector, output, boxes):
        result = real(detector, output, boxes)
        calls.append((detector, output, boxes, result))
        return result

    monkeypatch.setattr(module, "register_scene", recording)
    report = module.main(["--checkpoint", str(path), "--out", str(out), "--data", str(root), "--split", "all",
                          "--views", "3", "--scenes", "2", "--boxes", "gt"])
    saved = json.loads((out / "registration.json").read_text())
    assert saved == json.loads(json.dumps(report))
    scored = [s for s in saved["scenes"] if "skipped" not in s]
    assert scored, "no tiny scene had three boxes"
    for entry in scored:
        before, after, ref = entry["distance_before"], entry["distance_after"], entry["reference"]
        assert len(before) == len(after) == entry["objects"] == len(entry["labels"])
        assert before[ref] == after[ref] == 0.0  # the reference keeps its box
        # candidate 0 of every object is its own box: registration can only bring it nearer
        assert all(a <= b + 1e-6 for a, b in zip(after, before))
    assert (out / "registration.png").stat().st_size > 1000
    # "after" is read at the registered boxes, "before" at the given ones: recomputed from the volumes there
    moved = False
    for detector, output, boxes, result in calls:
        index = torch.zeros(boxes.center.shape[0], dtype=torch.int64)
        field = detector._registration_field(output)
        for key, at in (("before", boxes), ("after", result["registered"])):
            volumes = detector._registration_volumes(field, at, index).flatten(1)
            want = (volumes - volumes[result["reference"]]).norm(dim=1)
            np.testing.assert_allclose(result[key], want.numpy(), rtol=1e-5, atol=1e-6)
        moved |= not torch.allclose(result["registered"].yaw, boxes.yaw)
    assert calls and moved  # some box turned, so the two readings differ
