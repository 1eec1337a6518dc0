"""Scene-consensus boxes and the registration of object volumes to the scene's reference object."""
import math

import pytest
import torch

from oddsparse import SparseVoxels, VoxelGrid
from oddsparse.geometry.boxes import (YawBoxes, consensus_boxes, registration_candidates, yaw_boxes_to_corners)
from oddsparse.models.fields import VoxelFields
from oddsparse.models.scene_model import SceneOutput
from reference_eval import small_detector


def test_consensus_boxes_against_hand_computed_medians():
    # scene 0: three boxes (interleaved with scene 1's two); scene 1 has too few boxes to agree
    center = torch.tensor([[0.0, 0.0, 0.05], [5.0, 5.0, 0.5], [1.0, 0.0, 0.07], [6.0, 5.0, 0.4], [2.0, 0.0, 0.04]])
    size = torch.tensor([[0.2, 0.1, 0.1], [1.0, 1.0, 1.0], [0.3, 0.14, 0.12], [2.0, 2.0, 2.0], [0.1, 0.12, 0.1]])
    yaw = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
    scene = torch.tensor([0, 1, 0, 1, 0])
    out = consensus_boxes(YawBoxes(center, size, yaw), scene)
    # medians by hand: x sizes 0.2, 0.3, 0.1 -> 0.2; y 0.1, 0.14, 0.12 -> 0.12; z 0.1, 0.12, 0.1 -> 0.1;
    # bottoms 0.0, 0.01, -0.01 -> 0.0, so every centre z becomes 0.0 + 0.1 / 2
    for row in (0, 2, 4):
        assert torch.allclose(out.size[row], torch.tensor([0.2, 0.12, 0.1]))
        assert out.center[row, 2].item() == pytest.approx(0.05)
        assert torch.equal(out.center[row, :2], center[row, :2])
    for row in (1, 3):  # two boxes: unchanged
        assert torch.equal(out.size[row], size[row]) and torch.equal(out.center[row], center[row])
    assert torch.equal(out.yaw, yaw)
    with pytest.raises(ValueError, match="scene_index"):
        consensus_boxes(YawBoxes(center, size, yaw), scene[:3])


def _corner_set(boxes):
    corners = yaw_boxes_to_corners(*boxes)  # (O, 8, 3)
    return [sorted(tuple(round(v, 5) for v in c.tolist()) for c in box) for box in corners]


def test_registration_candidates_cover_turned_and_shifted_boxes():
    boxes = YawBoxes(torch.tensor([[0.1, -0.2, 0.05], [0.4, 0.3, 0.06]]), torch.tensor([[0.3, 0.1, 0.1]] * 2),
                     torch.tensor([0.2, -0.7]))
    offsets, shifts = (0.0, 0.25), (0.0, -0.02, 0.02)
    candidates = registration_candidates(boxes, offsets, shifts)
    per_box = 4 * len(offsets) * len(shifts) ** 2
    assert candidates.center.shape == (2 * per_box, 3)
    rows = 0
    for o in range(2):  # a naive loop over the documented order: q, offset, dx, dy
        for q in range(4):
            for offset in offsets:
                for dx in shifts:
                    for dy in shifts:
                        c = candidates.center[rows]
                        assert torch.allclose(c, boxes.center[o] + torch.tensor([dx, dy, 0.0]), atol=1e-6)
                        assert candidates.yaw[rows].item() == pytest.approx(boxes.yaw[o].item() + offset + q * math.pi / 2)
                        # same footprint as the box turned by the offset alone
                        plain = YawBoxes(c[None], boxes.size[o:o + 1], (boxes.yaw[o] + offset)[None])
                        got = YawBoxes(c[None], candidates.size[rows:rows + 1], candidates.yaw[rows:rows + 1])
                        assert _corner_set(got) == _corner_set(plain)
                        rows += 1
    first = YawBoxes(*(t[::per_box] for t in candidates))
    assert all(torch.allclose(a, b) for a, b in zip(first, boxes))


def _bump_scene(detector, placements, seed=0):
    """A SceneOutput on a fine grid holding copies of one asymmetric object: a sum of Gaussian bumps
    placed in each object's frame (centre, yaw). Density, F_v and beta are all functions of the
    object-frame position, so a box with the right yaw reads the same volume for every copy."""
    g = torch.Generator().manual_seed(seed)
    grid = detector.scene_model.grid
    bumps = torch.tensor([[0.06, 0.0, 0.03], [-0.04, 0.03, 0.03], [0.0, -0.03, 0.05]], dtype=torch.float64)
    channels = detector.scene_model.volume_channels + detector.scene_model.fields.feature_dim
    weights = torch.randn(3, channels, generator=g, dtype=torch.float64)
    coords = torch.nonzero(torch.ones(grid.shape, dtype=torch.bool))
    world = torch.tensor(grid.origin, dtype=torch.float64) + (coords.double() + 0.5) * grid.voxel_size
    values = torch.zeros(len(coords), channels, dtype=torch.float64)
    density = torch.zeros(len(coords), dtype=torch.float64)
    for (cx, cy, yaw) in placements:
        rel = world - torch.tensor([cx, cy, 0.0], dtype=torch.float64)
        c, s = math.cos(yaw), math.sin(yaw)
        local = torch.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1], rel[:, 2]], 1)
        response = torch.exp(-((local[:, None, :] - bumps[None]) ** 2).sum(-1) / (2 * 0.025 ** 2))  # (N, 3)
        values += response @ weights
        density += 100.0 * response.sum(1)
    batch = torch.zeros(len(coords), 1, dtype=torch.int64)
    voxels = SparseVoxels(torch.cat([batch, coords], 1).int(), values, grid=grid, batch_size=1)
    v_channels = detector.scene_model.volume_channels
    fields = VoxelFields(voxels.replace(feats=torch.cat([density[:, None], torch.zeros(len(coords), 3, dtype=torch.float64),
                                                         values[:, v_channels:]], 1)))
    return SceneOutput(occupancy=voxels.replace(feats=torch.ones(len(coords), 1, dtype=torch.float64)),
                       volume=voxels.replace(feats=values[:, :v_channels]), fields=fields, foreground_logits=None)


def _fine_detector(**kwargs):
    detector = small_detector(roi_size=8, register_objects=True, register_yaw_offsets=(-20, -10, 0, 10, 20), **kwargs)
    detector.scene_model.grid = VoxelGrid(shape=(64, 32, 6), voxel_size=0.02, origin=(-0.64, -0.32, 0.0))
    return detector


def test_register_boxes_reads_every_copy_in_the_reference_frame():
    detector = _fine_detector()
    true_yaw = [0.3, -1.1, 2.0, 0.9]
    placements = [(-0.45, 0.0, true_yaw[0]), (-0.15, 0.0, true_yaw[1]), (0.15, 0.0, true_yaw[2]), (0.45, 0.0, true_yaw[3])]
    scene = _bump_scene(detector, placements)
    # boxes of the right footprint with yaw errors: quarter-turns plus offsets within the tried set
    error = [0.0, math.pi / 2 + math.radians(10), -math.radians(20), math.pi + math.radians(-10)]
    boxes = YawBoxes(torch.tensor([[x, y, 0.05] for x, y, _ in placements], dtype=torch.float64),
                     torch.tensor([[0.2, 0.16, 0.1]] * 4, dtype=torch.float64),
                     torch.tensor([t + e for t, e in zip(true_yaw, error)], dtype=torch.float64))
    index = torch.zeros(4, dtype=torch.int64)
    registered = detector.register_boxes(scene, boxes, index)
    # every registered box stands in the same relation to its copy (the reference's, modulo 2 pi)
    relation = [(registered.yaw[i] - true_yaw[i]).item() for i in range(4)]
    for r in relation:
        assert math.remainder(r - relation[0], 2 * math.pi) == pytest.approx(0.0, abs=1e-6)
    before = detector.object_volumes(scene, boxes, index).flatten(1)
    after = detector.object_volumes(scene, registered, index).flatten(1)
    spread = lambda x: torch.cdist(x, x).max().item()  # noqa: E731
    assert spread(after) < 0.3 * spread(before)  # what remains is trilinear sampling at other grid phases
    # scoring registers: score_boxes is score_volumes of the registered boxes' volumes
    logits, _ = detector.score_boxes(scene, boxes, index)
    assert torch.allclose(logits, detector.score_volumes(detector.object_volumes(scene, registered, index), index)[0])


def _naive_register(detector, scene, boxes, offsets_deg, channels="all", resolution=0):
    """register_boxes as a plain loop over objects and candidates (one box at a time)."""
    from oddsparse.geometry.roi import roi_sample
    from oddsparse.models.detector import voxel_opacity

    n = boxes.center.shape[0]
    one = torch.zeros(1, dtype=torch.int64)
    feats = [scene.volume.feats] + ([scene.fields.features] if channels == "all" else [])
    field = scene.volume.replace(feats=torch.cat([*feats, voxel_opacity(scene.fields)[:, None]], 1))

    def volume(c, s, y):
        return roi_sample(field, YawBoxes(c[None], s[None], y[None]), one, out_size=resolution or detector.roi_size,
                          margin=detector.roi_margin, method="dense")[0]

    def candidate(i, q, offset):
        size = boxes.size[i][[1, 0, 2]] if q % 2 else boxes.size[i]
        return boxes.center[i], size, boxes.yaw[i] + math.radians(offset) + q * math.pi / 2

    cost = [0.0] * n
    for r in range(n):
        for m in range(n):
            cost[r] += min(float((volume(*candidate(m, q, 0)) - volume(*candidate(r, 0, 0))).norm()) for q in range(4))
    reference = min(range(n), key=lambda r: cost[r])
    target = volume(*candidate(reference, 0, 0))
    out = []
    for i in range(n):
        if i == reference:
            out.append(candidate(i, 0, 0))
            continue
        options = [candidate(i, q, o) for q in range(4) for o in offsets_deg]
        out.append(min(options, key=lambda c: float((volume(*c) - target).norm())))
    return YawBoxes(*(torch.stack(t) for t in zip(*out)))


@pytest.mark.parametrize("channels,resolution", [("all", 0), ("geometry", 0), ("all", 4)])
def test_register_boxes_matches_a_naive_loop_and_ignores_other_scenes(channels, resolution):
    offsets = (0, -15, 15)
    detector = _fine_detector(register_channels=channels, register_resolution=resolution)
    detector.register_yaw_offsets = offsets
    placements = [(-0.45, 0.05, 0.2), (-0.1, -0.05, 1.4), (0.2, 0.0, -0.6), (0.5, 0.05, 2.5)]
    scene = _bump_scene(detector, placements, seed=3)
    g = torch.Generator().manual_seed(5)
    boxes = YawBoxes(torch.tensor([[x, y, 0.05] for x, y, _ in placements], dtype=torch.float64),
                     torch.tensor([[0.2, 0.14, 0.1]] * 4, dtype=torch.float64),
                     torch.rand(4, generator=g, dtype=torch.float64) * 6.28)
    index = torch.zeros(4, dtype=torch.int64)
    got = detector.register_boxes(scene, boxes, index)
    want = _naive_register(detector, scene, boxes, offsets, channels, resolution)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-9)
    # permuting the objects permutes the registered boxes
    perm = torch.tensor([2, 0, 3, 1])
    permuted = detector.register_boxes(scene, YawBoxes(*(t[perm] for t in boxes)), index)
    for a, b in zip(permuted, got):
        assert torch.allclose(a, b[perm], atol=1e-9)
    # a scene of two boxes is left as it is; packing it beside the first changes nothing there
    two = YawBoxes(*(torch.cat([t, t[:2]]) for t in boxes))
    both = detector.register_boxes(_two_scene_batch(scene), two, torch.tensor([0, 0, 0, 0, 1, 1]))
    for a, b, t in zip(both, got, boxes):
        assert torch.allclose(a[:4], b, atol=1e-9) and torch.equal(a[4:], t[:2])


def _two_scene_batch(scene):
    def twice(v):
        coords = torch.cat([v.coords, v.coords.clone()])
        coords[len(v.coords):, 0] = 1
        return SparseVoxels(coords, torch.cat([v.feats, v.feats]), grid=v.grid, batch_size=2)
    return SceneOutput(occupancy=twice(scene.occupancy), volume=twice(scene.volume),
                       fields=VoxelFields(twice(scene.fields.voxels)), foreground_logits=None)


def test_register_objects_is_refused_for_variant_a_and_off_by_default():
    with pytest.raises(ValueError, match="register_objects"):
        small_detector(variant="A", register_objects=True)
    with pytest.raises(ValueError, match="register_channels"):
        small_detector(register_channels="beta")
    with pytest.raises(ValueError, match="register_resolution"):
        small_detector(register_resolution=-1)
    detector = small_detector()
    assert not detector.register_objects and not detector.box_consensus
    boxes = YawBoxes(torch.zeros(3, 3, dtype=torch.float64), torch.ones(3, 3, dtype=torch.float64),
                     torch.zeros(3, dtype=torch.float64))
    assert detector.register_boxes(None, boxes, torch.zeros(3, dtype=torch.int64)) is boxes


@pytest.mark.parametrize("register", [False, True])
def test_warmup_flips_whole_scenes_when_the_volumes_are_registered(register, monkeypatch):
    from oddsparse.train.engine import ObjectVolumeCache, train_matcher_on_cache
    from reference_eval import random_object_volumes

    detector = small_detector(register_objects=register).float()
    volumes = random_object_volumes(detector, 40, seed=1).float()
    group = torch.arange(8).repeat_interleave(5)  # 8 scenes of 5 objects
    cache = ObjectVolumeCache(volumes, torch.randint(0, 2, (40,)), group)
    seen = []
    original = detector.score_volumes

    def spy(v, scene_index):
        seen.append((v.detach().clone(), scene_index.clone()))
        return original(v, scene_index)

    monkeypatch.setattr(detector, "score_volumes", spy)
    train_matcher_on_cache(detector, cache, steps=4, batch_size=4, progress=False)
    mixed = 0
    for v, scene_index in seen:
        for s in scene_index.unique().tolist():
            rows = v[scene_index == s]
            flipped = [not torch.equal(r, c) for r, c in zip(rows, _cached_rows(cache, rows))]
            mixed += len(set(flipped)) > 1
    if register:
        assert mixed == 0
    else:
        assert mixed > 0  # per-object half-turns: some scene has both


def _cached_rows(cache, rows):
    """The cached volume of each given (possibly half-turned) volume, found by content."""
    out = []
    for r in rows:
        hits = [c for c in cache.volumes if torch.equal(c, r) or torch.equal(c.flip(1, 2), r)]
        assert len(hits) == 1
        out.append(hits[0])
    return out


def test_register_boxes_marks_one_reference_per_registered_scene():
    detector = _fine_detector()
    scene = _bump_scene(detector, [(-0.45, 0.0, 0.1), (-0.15, 0.0, 1.0), (0.15, 0.0, 2.0), (0.45, 0.0, -0.5)])
    boxes = YawBoxes(torch.tensor([[-0.45, 0.0, 0.05], [-0.15, 0.0, 0.05], [0.15, 0.0, 0.05], [0.45, 0.0, 0.05]],
                                  dtype=torch.float64), torch.tensor([[0.2, 0.16, 0.1]] * 4, dtype=torch.float64),
                     torch.zeros(4, dtype=torch.float64))
    registered, references = detector.register_boxes(scene, boxes, torch.zeros(4, dtype=torch.int64),
                                                     return_references=True)
    assert references.sum() == 1
    r = int(torch.nonzero(references)[0, 0])
    assert all(torch.equal(a[r], b[r]) for a, b in zip(registered, boxes))
