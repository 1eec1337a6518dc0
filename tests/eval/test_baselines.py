"""Parameter-free baselines: distance_to_others and difference_to_others against naive per-pair loops and hand
cases; the
report_baselines recipe end to end, its matcher scorer checked against oddsparse eval --gt-boxes."""
from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
import torch

from oddsparse.eval.baselines import difference_to_others, distance_to_others
from recipe_loader import load_recipe



def _naive(volumes, scene_index, reduce, half_turn, weights=None):
    """One Python loop per object pair; the half-turn reverses cell indices i and j explicitly."""
    o, c, s = volumes.shape[0], volumes.shape[1], volumes.shape[2]
    v = volumes.double().tolist()
    w = (torch.ones_like(volumes) if weights is None else weights.expand_as(volumes)).double().tolist()
    out = []
    for n in range(o):
        dists = []
        for m in range(o):
            if m == n or int(scene_index[m]) != int(scene_index[n]):
                continue
            plain = turned = plain_w = turned_w = 0.0
            for ch in range(c):
                for i in range(s):
                    for j in range(s):
                        for k in range(s):
                            a, wa = v[n][ch][i][j][k], w[n][ch][i][j][k]
                            wb, wt = w[m][ch][i][j][k], w[m][ch][s - 1 - i][s - 1 - j][k]
                            plain += wa * wb * (a - v[m][ch][i][j][k]) ** 2
                            turned += wa * wt * (a - v[m][ch][s - 1 - i][s - 1 - j][k]) ** 2
                            plain_w += wa * wb
                            turned_w += wa * wt
            entries = c * s**3
            d = math.sqrt(entries * plain / plain_w) if plain_w > 0 else 0.0
            d_turned = math.sqrt(entries * turned / turned_w) if turned_w > 0 else 0.0
            dists.append(min(d, d_turned) if half_turn else d)
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


@pytest.mark.parametrize("half_turn", [True, False])
def test_weighted_distance_to_others_matches_the_naive_loop(half_turn):
    g = torch.Generator().manual_seed(4)
    scene_index = torch.tensor([1, 0, 0, 1, 0, 1, 0])
    volumes = torch.randn(scene_index.numel(), 2, 3, 3, 3, generator=g)
    weights = torch.rand(scene_index.numel(), 1, 3, 3, 3, generator=g) * (torch.rand(7, 1, 3, 3, 3, generator=g) > 0.3)
    got = distance_to_others(volumes, scene_index, half_turn=half_turn, weights=weights)
    assert torch.allclose(got.double(), _naive(volumes, scene_index, "median", half_turn, weights), atol=1e-4)
    ones = distance_to_others(volumes, scene_index, half_turn=half_turn, weights=torch.ones_like(volumes))
    assert torch.allclose(ones, distance_to_others(volumes, scene_index, half_turn=half_turn), atol=1e-4)


def test_weighted_distances_keep_float32_near_copies_with_large_entries():
    """Near-copies whose entries are large (about 5) differ by about 0.01 per entry: the weighted distance of
    float32 volumes must read that difference, as the float64 loop does (the expanded sums cancel in float32)."""
    g = torch.Generator().manual_seed(5)
    base = 5 + torch.randn(1, 48, 8, 8, 8, generator=g, dtype=torch.float64)
    volumes = torch.cat([base + 0.01 * torch.randn(3, 48, 8, 8, 8, generator=g, dtype=torch.float64),
                         base + torch.randn(1, 48, 8, 8, 8, generator=g, dtype=torch.float64)])
    scene_index, weights = torch.zeros(4, dtype=torch.int64), torch.rand(4, 1, 8, 8, 8, generator=g, dtype=torch.float64)
    expected = _naive(volumes, scene_index, "median", True, weights)
    got = distance_to_others(volumes.float(), scene_index, weights=weights.float())
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), expected, rtol=1e-3), (got, expected)
    assert expected[:3].min() > 0.1  # the copies are apart: a cancelled distance (0) fails the line above


def test_weights_hide_what_one_object_did_not_observe():
    base = torch.zeros(3, 1, 2, 2, 2)
    base[2, 0, 1, 1, 1] = 5.0  # object 2 differs in one cell ...
    weights = torch.ones_like(base)
    weights[2, 0, 1, 1, 1] = 0.0  # ... that it did not observe
    assert distance_to_others(base, torch.zeros(3, dtype=torch.int64), half_turn=False)[2].item() > 0
    assert distance_to_others(base, torch.zeros(3, dtype=torch.int64), half_turn=False,
                              weights=weights).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="weights"):
        distance_to_others(base, torch.zeros(3, dtype=torch.int64), weights=weights[:, :, :1])


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
                                     "distance_all", "distance_carved", "fewer_cells"}
    assert (out / "baselines.png").stat().st_size > 1000
    detector, checkpoint = load_detector(path)
    reference = evaluate_detector(detector, root, "all", views=(3,), image_size=tuple(checkpoint["image_size"]),
                                  max_scenes=2, boxes="gt", progress=False)
    matcher = saved["scorers"]["matcher"]
    assert matcher["object_AUROC"] == pytest.approx(reference["object_AUROC"])
    assert matcher["object_AUROC_pooled"] == pytest.approx(reference["object_AUROC_pooled"])
    # each scene's AUROC, as oddsparse eval's report gives it, so that two scorers pair scene by scene
    assert [row["name"] for row in matcher["per_scene"]] == [row["name"] for row in reference["per_scene"]]
    for got, expected in zip(matcher["per_scene"], reference["per_scene"]):
        assert (got["object_AUROC"] is None) == (expected["object_AUROC"] is None)
        assert expected["object_AUROC"] is None or got["object_AUROC"] == pytest.approx(expected["object_AUROC"])
    from oddsparse.eval import bootstrap_object_auroc

    interval, diff = bootstrap_object_auroc(matcher, reference)
    assert interval[0] <= matcher["object_AUROC"] <= interval[1] and diff == pytest.approx((0.0, 0.0), abs=1e-6)
    # finer volumes for the distances: the matcher (built for its resolution) is left out, the
    # distances are those of volumes sampled at that size
    finer = module.main(["--checkpoint", str(path), "--out", str(tmp_path / "finer"), "--data", str(root),
                         "--split", "all", "--views", "3", "--scenes", "2", "--roi-size", str(2 * detector.roi_size)])
    assert finer["roi_size"] == 2 * detector.roi_size and saved["roi_size"] == detector.roi_size
    assert set(finer["scorers"]) == set(saved["scorers"]) - {"matcher"}
    from oddsparse.data.dataset import SceneDataset
    from oddsparse.eval.evaluate import read_scene_with_boxes
    from oddsparse.eval.metrics import ScenePrediction

    detector.roi_size *= 2  # the expected figure, from volumes sampled here at that size
    predictions, annotations = [], []
    for folder in SceneDataset(root, "all").scenes[:2]:
        scene, gt = read_scene_with_boxes(folder, 3, tuple(checkpoint["image_size"]))
        index = torch.zeros(gt.center.shape[0], dtype=torch.int64)
        with torch.no_grad():
            output = detector.scene_model(scene.images[None], scene.K[None], scene.world_to_cam[None])
            volumes = detector.object_volumes(output, gt, index)
        assert volumes.shape[-1] == finer["roi_size"]
        opacity = detector.volume_parts(volumes)["opacity"]
        predictions.append(ScenePrediction(boxes=gt, scores=distance_to_others(opacity, index)))
        annotations.append(_annotation(scene, gt))
    _assert_same_aurocs(finer["scorers"]["distance_opacity"], predictions, annotations)


def test_report_baselines_carved_distance_and_foreground_by_a_second_route(tmp_path_factory, tmp_path):
    # the carved volumes against the visual hull carved here from the encoder's foreground with the scene
    # model's carving settings, sampled cell by cell at the box cell centres; the foreground figures counted
    # in numpy; the report's distance_carved is the AUROC of those scores
    from reference_eval import tiny_checkpoint

    from oddsparse.data.dataset import SceneDataset
    from oddsparse.eval.evaluate import read_scene_with_boxes
    from oddsparse.eval.metrics import ScenePrediction
    from oddsparse.geometry.cameras import scale_intrinsics
    from oddsparse.geometry.carving import carve_occupancy
    from oddsparse.models.detector import load_detector

    module = load_recipe("report_baselines")
    root, path = tiny_checkpoint(tmp_path_factory, tmp_path)
    result = module.main(["--checkpoint", str(path), "--out", str(tmp_path / "b"), "--data", str(root),
                          "--split", "all", "--views", "3", "--scenes", "2"])
    detector, checkpoint = load_detector(path)
    detector.eval()
    model, size = detector.scene_model, tuple(checkpoint["image_size"])
    predictions, annotations, ious, fps, fns, on_floor, beyond = [], [], [], [], [], [], []
    for folder in SceneDataset(root, "all").scenes[:2]:
        scene, gt = read_scene_with_boxes(folder, 3, size)
        index = torch.zeros(gt.center.shape[0], dtype=torch.int64)
        with torch.no_grad():
            output = model(scene.images[None], scene.K[None], scene.world_to_cam[None])
            _, logits = model.encode(scene.images[None])
        full = logits[0] if logits.shape[-2:] == size else torch.nn.functional.interpolate(
            logits[0][:, None], size=size, mode="bilinear", align_corners=False)[:, 0]  # stride-4 logits, no refiner
        predicted, true = (torch.sigmoid(full) >= model.carve_threshold).numpy(), scene.masks.any(0).numpy()
        ious.append((predicted & true).sum() / (predicted | true).sum())
        fps.append((predicted & ~true).sum() / true.sum())
        fns.append((~predicted & true).sum() / true.sum())
        floor = scene.floor_mask.numpy()  # the generator writes the floor's mask: the false positives split
        on_floor.append((predicted & ~true & floor).sum() / true.sum())
        beyond.append((predicted & ~true & ~floor).sum() / true.sum())
        h, w = logits.shape[-2:]
        occupancy = carve_occupancy(torch.sigmoid(logits), scale_intrinsics(scene.K[None], w / size[1], h / size[0]),
                                    scene.world_to_cam[None], model.grid, threshold=model.carve_threshold,
                                    tolerance=model.carve_tolerance, dilation=model.carve_dilation,
                                    min_views=min(model.carve_min_views, 3), subdivisions=model.carve_subdivisions)
        dense = torch.zeros(model.grid.shape, dtype=torch.float64)
        dense[tuple(occupancy.coords[:, 1:].long().T)] = 1.0
        naive = torch.stack([_trilinear_box_samples(dense, model.grid, gt, o, detector.roi_size, detector.roi_margin)
                             for o in range(gt.center.shape[0])])[:, None]
        carved = module.carved_volumes(detector, output, gt, index)
        assert 0 < naive.sum() < naive.numel()
        torch.testing.assert_close(carved.double(), naive, atol=1e-6, rtol=0)
        scores = module.scorer_scores(detector, detector.object_volumes(output, gt, index), index,
                                      carved=carved)["distance_carved"]
        torch.testing.assert_close(scores.double(), distance_to_others(naive, index), atol=1e-4, rtol=1e-5)
        predictions.append(ScenePrediction(boxes=gt, scores=scores))
        annotations.append(_annotation(scene, gt))
    _assert_same_aurocs(result["scorers"]["distance_carved"], predictions, annotations)
    assert result["foreground"] == pytest.approx({"IoU": np.mean(ious), "false_positive": np.mean(fps),
                                                  "false_negative": np.mean(fns),
                                                  "false_positive_floor": np.mean(on_floor),
                                                  "false_positive_beyond_floor": np.mean(beyond)})


def _annotation(scene, gt):
    from oddsparse.eval.metrics import SceneAnnotation

    return SceneAnnotation(boxes=gt, labels=scene.labels.bool(), types=[t if t else "normal" for t in scene.anomaly_types],
                           num_views=3, name=scene.name)


def _assert_same_aurocs(got: dict, predictions, annotations):
    """A scorer's summary in a report against evaluate_objects on the scores computed in the test."""
    from oddsparse.eval.metrics import evaluate_objects

    expected = evaluate_objects(predictions, annotations)
    for key in ("object_AUROC", "object_AUROC_pooled"):
        assert expected[key] is not None and got[key] == pytest.approx(expected[key])


def _trilinear_box_samples(dense, grid, boxes, o, cells, margin):
    """(S, S, S) trilinear samples of a dense (X, Y, Z) volume at the cell centres of box ``o`` (zero outside)."""
    centre, size, yaw = boxes.center[o].double(), boxes.size[o].double() + 2 * margin, float(boxes.yaw[o])
    c, s = math.cos(yaw), math.sin(yaw)
    out = torch.zeros(cells, cells, cells, dtype=torch.float64)
    origin, voxel = torch.as_tensor(grid.origin, dtype=torch.float64), float(grid.voxel_size)
    for i in range(cells):
        for j in range(cells):
            for k in range(cells):
                local = (torch.tensor([i, j, k], dtype=torch.float64) + 0.5) / cells - 0.5
                x, y, z = (local * size).tolist()
                point = centre + torch.tensor([c * x - s * y, s * x + c * y, z], dtype=torch.float64)
                u = (point - origin) / voxel - 0.5  # continuous voxel index (centres at integers)
                base = torch.floor(u).long()
                frac = u - base
                value = 0.0
                for corner in range(8):
                    offset = torch.tensor([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1])
                    index = base + offset
                    if (index < 0).any() or (index >= torch.tensor(dense.shape)).any():
                        continue
                    weight = torch.prod(torch.where(offset.bool(), frac, 1 - frac))
                    value += float(weight) * float(dense[tuple(index.tolist())])
                out[i, j, k] = value
    return out


def test_foreground_agreement_by_hand():
    from recipe_loader import load_recipe

    agreement = load_recipe("report_baselines").foreground_agreement
    # one 2 x 4 view: GT object in columns 0-1, floor in row 1 of columns 2-3, the rest (row 0, columns 2-3) beyond it
    masks = torch.tensor([[[1, 1, 0, 0], [1, 1, 0, 0]]], dtype=torch.bool)
    floor = torch.tensor([[[0, 0, 0, 0], [0, 0, 1, 1]]], dtype=torch.bool)
    predicted = torch.tensor([[[1, 0, 1, 1], [1, 1, 1, 0]]], dtype=torch.bool)  # 3 of 4 object, 3 false positives
    logits = torch.where(predicted, 2.0, -2.0)
    result = agreement(logits, masks, 0.5, floor)
    assert result["IoU"] == pytest.approx(3 / 7)  # 3 shared of 7 predicted-or-true pixels
    assert result["false_positive"] == pytest.approx(3 / 4) and result["false_negative"] == pytest.approx(1 / 4)
    assert result["false_positive_floor"] == pytest.approx(1 / 4)  # (1, 2)
    assert result["false_positive_beyond_floor"] == pytest.approx(2 / 4)  # (0, 2), (0, 3)
    assert set(agreement(logits, masks, 0.5)) == {"IoU", "false_positive", "false_negative"}  # no floor mask


def _naive_difference(volumes, scene_index, groups):
    """Per object, per group, per cell: Python loops over the other objects; the half-turn decided by the pair's
    total squared difference, reversing cell indices i and j explicitly; the lower median by sorting."""
    o, c, s = volumes.shape[0], volumes.shape[1], volumes.shape[2]
    v = volumes.double().tolist()
    out = torch.zeros(o, len(groups), s, s, s, dtype=torch.float64)
    for n in range(o):
        partners = []
        for m in range(o):
            if m == n or int(scene_index[m]) != int(scene_index[n]):
                continue
            plain = sum((v[n][ch][i][j][k] - v[m][ch][i][j][k]) ** 2
                        for ch in range(c) for i in range(s) for j in range(s) for k in range(s))
            turned = sum((v[n][ch][i][j][k] - v[m][ch][s - 1 - i][s - 1 - j][k]) ** 2
                         for ch in range(c) for i in range(s) for j in range(s) for k in range(s))
            partners.append((m, turned < plain))
        if not partners:
            continue
        for g, channels in enumerate(groups):
            for i in range(s):
                for j in range(s):
                    for k in range(s):
                        values = sorted(sum((v[n][ch][i][j][k] - (v[m][ch][s - 1 - i][s - 1 - j][k] if turn
                                                                  else v[m][ch][i][j][k])) ** 2
                                            for ch in range(c)[channels]) for m, turn in partners)
                        out[n, g, i, j, k] = values[(len(values) - 1) // 2]
    return out


def test_difference_to_others_against_a_naive_loop():
    g = torch.Generator().manual_seed(3)
    volumes = torch.randn(7, 3, 3, 3, 3, generator=g, dtype=torch.float64)
    volumes[1] = volumes[0].flip(1, 2) + 0.01 * volumes[1]  # a half-turned near copy: the turn is taken
    scene = torch.tensor([0, 0, 1, 0, 0, 1, 2])  # scene 0 of four (even: lower median), 1 of two, 2 alone
    groups = [slice(2, None), slice(0, 2)]
    got = difference_to_others(volumes, scene, groups)
    assert torch.allclose(got, _naive_difference(volumes, scene, groups), atol=1e-10)
    assert torch.all(got[6] == 0)  # alone: zeros
    # summed over cells and groups, object 0's difference to its half-turned copy is the pair's turned distance
    pair = difference_to_others(volumes[:2], torch.zeros(2, dtype=torch.int64))
    assert pair[0].sum().sqrt().item() == pytest.approx(distance_to_others(volumes[:2], torch.zeros(2, dtype=torch.int64))[0].item())
    assert pair[0].sum() < ((volumes[0] - volumes[1]) ** 2).sum() / 100
    with pytest.raises(ValueError, match="scene_index"):
        difference_to_others(volumes, scene[:3])


def test_report_baselines_distance_fit(tmp_path_factory, tmp_path):
    """``--fit-scenes``: the weights are sklearn's logistic regression on distance columns computed here by hand
    (log1p of distance_to_others per channel group, standardised per scene) from the fit split's GT-box volumes,
    and the report's distance_fit is the AUROC of those columns times the weights."""
    from reference_eval import tiny_checkpoint
    from sklearn.linear_model import LogisticRegression

    from oddsparse.data.dataset import SceneDataset
    from oddsparse.eval.baselines import fit_distance_weights
    from oddsparse.eval.evaluate import read_scene_with_boxes
    from oddsparse.eval.metrics import ScenePrediction
    from oddsparse.models.detector import load_detector

    module = load_recipe("report_baselines")
    root, path = tiny_checkpoint(tmp_path_factory, tmp_path)
    result = module.main(["--checkpoint", str(path), "--out", str(tmp_path / "b"), "--data", str(root),
                          "--split", "all", "--views", "3", "--scenes", "2", "--fit-split", "all", "--fit-scenes", "2"])
    detector, checkpoint = load_detector(path)
    c_v = detector.scene_model.volume_channels
    columns, labels, per_scene = [], [], []
    for folder in SceneDataset(root, "all").scenes[:2]:
        scene, gt = read_scene_with_boxes(folder, 3, tuple(checkpoint["image_size"]))
        index = torch.zeros(gt.center.shape[0], dtype=torch.int64)
        with torch.no_grad():
            output = detector.scene_model(scene.images[None], scene.K[None], scene.world_to_cam[None])
            volumes = detector.object_volumes(output, gt, index).double()
        raw = np.stack([np.log1p(distance_to_others(group, index).numpy())
                        for group in (volumes[:, -1:], volumes[:, :c_v], volumes[:, c_v:-1])], axis=1)
        columns.append((raw - raw.mean(0)) / (raw.std(0) + 1e-6))
        labels.append(scene.labels.numpy())
        per_scene.append((scene, gt))
    expected = LogisticRegression().fit(np.concatenate(columns), np.concatenate(labels))
    fit = result["distance_fit"]
    assert fit["split"] == "all" and fit["scenes"] == 2
    weights = np.array([fit["weights"][g] for g in ("opacity", "F_v", "beta")])
    np.testing.assert_allclose(weights, expected.coef_[0], rtol=1e-3, atol=1e-4)
    predictions = [ScenePrediction(boxes=gt, scores=torch.from_numpy(c @ weights + fit["bias"]))
                   for c, (_, gt) in zip(columns, per_scene)]
    _assert_same_aurocs(result["scorers"]["distance_fit"], predictions, [_annotation(s, gt) for s, gt in per_scene])
    assert fit_distance_weights(np.zeros((3, 2)), np.zeros(3)) is None  # one class: nothing to fit
    with pytest.raises(ValueError, match="columns must be"):
        fit_distance_weights(np.zeros(3), np.zeros(3))
