"""Parameter-free baselines: distance_to_others against a naive per-pair loop and hand cases; the
report_baselines recipe end to end, its matcher scorer checked against oddsparse eval --gt-boxes."""
from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

from oddsparse.eval.baselines import distance_to_others
from recipe_loader import load_recipe



def _naive(volumes, scene_index, reduce, half_turn):
    """One Python loop per object pair; the half-turn reverses cell indices i and j explicitly."""
    o, c, s = volumes.shape[0], volumes.shape[1], volumes.shape[2]
    v = volumes.double().tolist()
    out = []
    for n in range(o):
        dists = []
        for m in range(o):
            if m == n or int(scene_index[m]) != int(scene_index[n]):
                continue
            plain = turned = 0.0
            for ch in range(c):
                for i in range(s):
                    for j in range(s):
                        for k in range(s):
                            a = v[n][ch][i][j][k]
                            plain += (a - v[m][ch][i][j][k]) ** 2
                            turned += (a - v[m][ch][s - 1 - i][s - 1 - j][k]) ** 2
            d = math.sqrt(plain)
            dists.append(min(d, math.sqrt(turned)) if half_turn else d)
        if not dists:
            out.append(0.0)
        else:
            out.append(statistics.median_low(dists) if reduce == "median" else sum(dists) / len(dists))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("reduce", ["median", "mean"])
@pytest.mark.parametrize("half_turn", [True, False])
def test_distance_to_others_matches_the_naive_loop(reduce, half_turn):
    g = torch.Generator().manual_seed(3)
    scene_index = torch.tensor([2, 0, 0, 1, 2, 0, 2, 0, 3, 2, 2])  # scenes of 4, 1, 5 and 1 objects, interleaved
    volumes = torch.randn(scene_index.numel(), 2, 3, 3, 3, generator=g)
    got = distance_to_others(volumes, scene_index, reduce=reduce, half_turn=half_turn)
    assert torch.allclose(got.double(), _naive(volumes, scene_index, reduce, half_turn), atol=1e-4)


def test_the_odd_one_scores_highest_and_a_half_turned_copy_is_no_different():
    base = torch.zeros(1, 1, 4, 4, 4)
    base[0, 0, 0, 0, :] = 1.0  # an asymmetric part in one corner
    turned = base.flip(2, 3)  # the same object, its canonical box turned by pi
    odd = base.clone()
    odd[0, 0, 1, 2, 3] = 2.0
    volumes = torch.cat([base, turned, base, odd])
    scene = torch.zeros(4, dtype=torch.int64)
    scores = distance_to_others(volumes, scene)
    assert scores[:3].tolist() == [0.0, 0.0, 0.0] and scores[3].item() == pytest.approx(2.0)
    plain = distance_to_others(volumes, scene, half_turn=False)
    assert plain[1].item() == pytest.approx(math.sqrt(8.0))  # 4 + 4 cells differ by 1 without the half-turn


def test_distance_to_others_rejects_bad_input():
    with pytest.raises(ValueError, match="volumes must be"):
        distance_to_others(torch.zeros(3, 4, 4), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="scene_index"):
        distance_to_others(torch.zeros(3, 1, 2, 2, 2), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="reduce"):
        distance_to_others(torch.zeros(3, 1, 2, 2, 2), torch.zeros(3, dtype=torch.int64), reduce="max")


def test_report_baselines_end_to_end(tmp_path_factory, tmp_path):
    from reference_eval import tiny_checkpoint

    from oddsparse.eval.evaluate import evaluate_detector
    from oddsparse.models.detector import load_detector

    module = load_recipe("report_baselines")
    root, path = tiny_checkpoint(tmp_path_factory, tmp_path)
    out = tmp_path / "baselines"
    result = module.main(["--checkpoint", str(path), "--out", str(out), "--data", str(root), "--split", "all",
                          "--views", "3", "--scenes", "2"])
    saved = json.loads((out / "baselines.json").read_text())
    assert saved == json.loads(json.dumps(result)) and saved["scenes"] == 2
    assert set(saved["scorers"]) == {"matcher", "distance_opacity", "distance_F_v", "distance_beta",
                                     "distance_all", "fewer_cells"}
    assert (out / "baselines.png").stat().st_size > 1000
    detector, checkpoint = load_detector(path)
    reference = evaluate_detector(detector, root, "all", views=(3,), image_size=tuple(checkpoint["image_size"]),
                                  max_scenes=2, boxes="gt", progress=False)
    matcher = saved["scorers"]["matcher"]
    assert matcher["object_AUROC"] == pytest.approx(reference["object_AUROC"])
    assert matcher["object_AUROC_pooled"] == pytest.approx(reference["object_AUROC_pooled"])
