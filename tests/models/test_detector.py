"""Detector glue: box estimation from density, label assignment, canonical boxes, end-to-end shapes."""
import math

import pytest
import torch

from oddsparse import SparseVoxels, VoxelGrid
from oddsparse.geometry.boxes import YawBoxes, box_iou_3d
from oddsparse.geometry.cameras import default_intrinsics, orbit_cameras
from oddsparse.models.detector import (OddOneOutDetector, assign_labels, build_detector, canonical_boxes,
                                       estimate_boxes, load_detector, training_boxes, voxel_opacity)
from oddsparse.models.fields import VoxelFields
from oddsparse.models.matcher import ObjectTokens
from oddsparse.models.scene_model import SceneModel
from oddsparse.utils.checkpoint import save_checkpoint


def _fields_with_blocks(grid, blocks, density=200.0):
    """Fields whose density is high inside the given index blocks [(lo, hi)] and low on a 1-voxel shell."""
    dense = torch.zeros(1, 4 + 8, *grid.shape)
    occupied = torch.zeros(1, *grid.shape, dtype=torch.bool)
    for lo, hi in blocks:
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        shell = tuple(slice(max(a - 1, 0), b + 1) for a, b in zip(lo, hi))
        occupied[(0, *shell)] = True
        dense[(0, 0, *sl)] = density
    voxels = SparseVoxels.from_dense(dense, grid, mask=occupied)
    return VoxelFields(voxels)


def test_voxel_opacity_is_the_transmittance_of_a_fixed_length():
    """Opacity of 4 cm (the paper's voxel) of density, whatever the grid's voxel size."""
    for voxel_size in (0.02, 0.05):
        grid = VoxelGrid(shape=(4, 4, 4), voxel_size=voxel_size, origin=(0, 0, 0))
        opacity = voxel_opacity(_fields_with_blocks(grid, [((1, 1, 1), (2, 2, 2))], density=10.0))
        assert torch.allclose(opacity.max(), torch.tensor(1 - math.exp(-10.0 * 0.04)))
        assert opacity.min() == 0.0


def test_estimate_boxes_ignores_the_dilation_shell():
    """With ``carved`` the shell voxels (dense but not carved) do not inflate the boxes."""
    grid = VoxelGrid(shape=(32, 32, 8), voxel_size=0.04, origin=(-0.64, -0.64, 0.0))
    fields = _fields_with_blocks(grid, [((4, 4, 1), (10, 8, 4))])
    fields = VoxelFields(fields.voxels.replace(feats=fields.voxels.feats.clone().fill_(200.0)))  # shell dense too
    inside = ((fields.voxels.coords[:, 1:] >= torch.tensor([4, 4, 1])) &
              (fields.voxels.coords[:, 1:] < torch.tensor([10, 8, 4]))).all(dim=1)
    with_shell, _ = estimate_boxes(fields, 0.2)
    without_shell, _ = estimate_boxes(fields, 0.2, carved=inside)
    sizes = torch.sort(without_shell.size[0, :2], descending=True).values
    assert torch.allclose(sizes, torch.tensor([6.0, 4.0]) * 0.04, atol=1e-5)
    assert torch.allclose(without_shell.size[0, 2], torch.tensor(3 * 0.04))
    assert (with_shell.size[0] > without_shell.size[0] + 0.07).all()  # a voxel more on each side


def test_estimate_boxes_finds_separated_blocks_without_a_count():
    grid = VoxelGrid(shape=(32, 32, 8), voxel_size=0.04, origin=(-0.64, -0.64, 0.0))
    blocks = [((2, 3, 0), (8, 6, 4)), ((20, 20, 0), (23, 29, 3))]
    boxes, scene_index = estimate_boxes(_fields_with_blocks(grid, blocks), threshold=0.2)
    assert boxes.center.shape == (2, 3) and scene_index.tolist() == [0, 0]
    expected_centers = torch.tensor([[(2 + 8) / 2, (3 + 6) / 2, 2.0], [(20 + 23) / 2, (20 + 29) / 2, 1.5]]) * 0.04
    expected_centers[:, :2] -= 0.64
    order = torch.argsort(boxes.center[:, 0])
    assert torch.allclose(boxes.center[order], expected_centers, atol=1e-5)
    sizes = torch.sort(boxes.size[order, :2], dim=1, descending=True).values
    assert torch.allclose(sizes, torch.tensor([[6.0, 3.0], [9.0, 3.0]]) * 0.04, atol=1e-5)


def test_canonical_boxes_describe_the_same_box():
    boxes = YawBoxes(torch.tensor([[0.0, 0.0, 0.1], [1.0, 0.0, 0.1]]), torch.tensor([[0.2, 0.4, 0.1], [0.5, 0.3, 0.2]]),
                     torch.tensor([2.5, -3.0]))
    canon = canonical_boxes(boxes)
    assert (canon.size[:, 0] >= canon.size[:, 1]).all()
    assert ((canon.yaw >= -math.pi / 2) & (canon.yaw < math.pi / 2)).all()
    assert torch.allclose(torch.diagonal(box_iou_3d(boxes, canon)).float(), torch.ones(2), atol=1e-5)


def test_assign_labels_matches_within_scenes_only():
    size = torch.tensor([[0.2, 0.2, 0.2]])
    gt = YawBoxes(torch.tensor([[0.0, 0.0, 0.1], [1.0, 0.0, 0.1], [0.0, 0.0, 0.1]]), size.repeat(3, 1), torch.zeros(3))
    gt_labels = torch.tensor([0, 1, 1])
    gt_scene = torch.tensor([0, 0, 1])
    # predicted: near GT 1 of scene 0, far from everything, near GT 0 of scene 1 (same place as GT 0 of scene 0)
    pred = YawBoxes(torch.tensor([[1.02, 0.0, 0.1], [5.0, 5.0, 0.1], [0.01, 0.0, 0.1]]), size.repeat(3, 1), torch.zeros(3))
    labels, gt_index = assign_labels(pred, torch.tensor([0, 0, 1]), gt, gt_labels, gt_scene)
    assert labels.tolist() == [1, -1, 1]
    assert gt_index.tolist() == [1, -1, 2]


def test_training_boxes_fall_back_to_gt_per_scene_without_duplicates():
    """Scene 0 has a matched predicted box: its predicted boxes stay (the unmatched one labelled -1);
    scene 1's only predicted box matches nothing: it is replaced by scene 1's GT boxes (canonical form)."""
    size = torch.tensor([[0.2, 0.2, 0.2]])
    gt = YawBoxes(torch.tensor([[0.0, 0.0, 0.1], [1.0, 0.0, 0.1], [3.0, 0.0, 0.1], [4.0, 0.0, 0.1]]),
                  torch.tensor([[0.2, 0.2, 0.2], [0.2, 0.2, 0.2], [0.1, 0.3, 0.2], [0.2, 0.2, 0.2]]), torch.zeros(4))
    gt_labels, gt_scene = torch.tensor([0, 1, 1, 0]), torch.tensor([0, 0, 1, 1])
    pred = YawBoxes(torch.tensor([[1.01, 0.0, 0.1], [7.0, 7.0, 0.1], [9.0, 9.0, 0.1]]), size.repeat(3, 1), torch.zeros(3))
    boxes, scene, labels, predicted = training_boxes(pred, torch.tensor([0, 0, 1]), gt, gt_labels, gt_scene)
    assert scene.tolist() == [0, 0, 1, 1]
    assert labels.tolist() == [1, -1, 1, 0]
    assert predicted.tolist() == [True, True, False, False]
    assert torch.equal(boxes.center[:2], pred.center[:2])
    assert torch.equal(boxes.center[2:], gt.center[2:])
    # GT box 2 (0.1 x 0.3, yaw 0) in canonical form: 0.3 x 0.1, turned by a quarter
    assert torch.allclose(boxes.size[2], torch.tensor([0.3, 0.1, 0.2]))
    assert math.isclose(abs(float(boxes.yaw[2])), math.pi / 2, abs_tol=1e-6)
    # nothing matches anywhere: every scene takes its GT boxes; no predicted boxes at all: the same
    far = YawBoxes(pred.center + 20.0, pred.size, pred.yaw)
    for p, s in ((far, torch.tensor([0, 0, 1])), (YawBoxes(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0)),
                                                  torch.zeros(0, dtype=torch.int64))):
        boxes, scene, labels, predicted = training_boxes(p, s, gt, gt_labels, gt_scene)
        assert scene.tolist() == gt_scene.tolist() and labels.tolist() == gt_labels.tolist()
        assert not bool(predicted.any())


def _tiny_detector(variant="full"):
    grid = VoxelGrid(shape=(16, 16, 8), voxel_size=0.04, origin=(-0.32, -0.32, 0.0))
    scene_model = SceneModel(grid=grid, feature_channels=8, backbone_channels=(8, 8, 16, 16), feature_dim=16)
    return OddOneOutDetector(scene_model, variant=variant, k=3, heads=2, blocks=1, dim=16, roi_size=4)


def test_detector_end_to_end_shapes_and_given_boxes_permute():
    torch.manual_seed(0)
    detector = _tiny_detector().eval()
    views = 3
    w2c = orbit_cameras(views, radius=1.0, elevation_deg=30.0, target=(0.0, 0.0, 0.1)).float()[None]
    K = default_intrinsics(32).expand(1, views, 3, 3).contiguous()
    images = torch.randint(0, 255, (1, views, 32, 32, 3), dtype=torch.uint8)
    masks = torch.zeros(1, views, 32, 32, dtype=torch.bool)
    masks[..., 8:24, 6:26] = True
    boxes = YawBoxes(torch.tensor([[-0.1, -0.1, 0.06], [0.1, 0.1, 0.06], [0.1, -0.1, 0.06]]),
                     torch.full((3, 3), 0.12), torch.tensor([0.0, 0.3, -0.2]))
    scene_index = torch.zeros(3, dtype=torch.int64)
    with torch.no_grad():
        detection = detector(images, K, w2c, carve_masks=masks, boxes=(boxes, scene_index))
        assert detection.logits.shape == (3,) and detection.scene.occupancy.num_voxels > 0
        # boxes use the carving agreement row by row on the fields: both must hold the same sites in order
        assert torch.equal(detection.scene.occupancy.coords, detection.scene.fields.voxels.coords)
        order = torch.tensor([2, 0, 1])
        permuted = detector(images, K, w2c, carve_masks=masks,
                            boxes=(YawBoxes(*(t[order] for t in boxes)), scene_index))
    assert torch.allclose(permuted.logits, detection.logits[order], atol=1e-5)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    detector = _tiny_detector(variant="B")
    grid = detector.scene_model.grid
    save_checkpoint(tmp_path / "d.pt", {
        "scene_kwargs": {"grid": {"shape": list(grid.shape), "voxel_size": grid.voxel_size, "origin": list(grid.origin)},
                         "feature_channels": 8, "backbone_channels": [8, 8, 16, 16], "feature_dim": 16},
        "detector_kwargs": {"variant": "B", "k": 3, "heads": 2, "blocks": 1, "dim": 16, "roi_size": 4},
        "model": detector.state_dict()})
    loaded, _ = load_detector(tmp_path / "d.pt")
    for (name, a), (_, b) in zip(detector.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded.variant == "B" and not loaded.training
    save_checkpoint(tmp_path / "bad.pt", {"model": {}})
    with pytest.raises(ValueError, match="scene_kwargs"):
        load_detector(tmp_path / "bad.pt")


def test_half_turned_box_reads_the_flipped_object_volume():
    # a yaw box turned by pi is the same box; its r^3 volume must be the original read with x and y reversed
    torch.manual_seed(2)
    detector = _tiny_detector().eval()
    grid = detector.scene_model.grid
    coords = torch.nonzero(torch.ones(grid.shape, dtype=torch.bool))
    voxels = SparseVoxels(torch.cat([torch.zeros(len(coords), 1, dtype=torch.int64), coords], 1).int(),
                          torch.randn(len(coords), 8 + 16), grid=grid, batch_size=1)
    from oddsparse.models.fields import VoxelFields as Fields
    from oddsparse.models.scene_model import SceneOutput

    density = torch.rand(len(coords), 1) * 50
    fields = Fields(voxels.replace(feats=torch.cat([density, torch.rand(len(coords), 3), voxels.feats[:, 8:]], 1)))
    scene = SceneOutput(occupancy=voxels.replace(feats=torch.ones(len(coords), 1)),
                        volume=voxels.replace(feats=voxels.feats[:, :8]), fields=fields, foreground_logits=None)
    boxes = YawBoxes(torch.tensor([[0.03, -0.05, 0.12], [-0.1, 0.08, 0.1]]), torch.tensor([[0.2, 0.12, 0.1]] * 2),
                     torch.tensor([0.4, -1.2]))
    turned = YawBoxes(boxes.center, boxes.size, boxes.yaw + math.pi)
    index = torch.zeros(2, dtype=torch.int64)
    volumes = detector.object_volumes(scene, boxes, index)
    assert volumes.shape == (2, 8 + 16 + 1, 4, 4, 4)
    assert torch.allclose(detector.object_volumes(scene, turned, index), volumes.flip(2, 3), atol=1e-5)
    # score_boxes is score_volumes of object_volumes
    logits, _ = detector.score_boxes(scene, boxes, index)
    assert torch.allclose(logits, detector.score_volumes(volumes, index)[0])


def _block_scene(detector, blocks):
    """A SceneOutput whose density is high on index blocks (carved) and zero elsewhere, features random."""
    grid = detector.scene_model.grid
    fields = _fields_with_blocks(grid, blocks)
    n = fields.voxels.num_voxels
    carved = (fields.density > 0).float()[:, None]
    from oddsparse.models.scene_model import SceneOutput

    feats = torch.cat([fields.voxels.feats[:, :1], torch.rand(n, 3), torch.randn(n, 16)], 1)
    fields = VoxelFields(fields.voxels.replace(feats=feats))
    return SceneOutput(occupancy=fields.voxels.replace(feats=carved), volume=fields.voxels.replace(
        feats=torch.randn(n, 8)), fields=fields, foreground_logits=None)


def _box_head_scene(**kwargs):
    """A small box-head detector (eval mode; ``kwargs`` added) and a scene of two blocks, 6 x 3 x 4 and 3 x 9 x 3
    voxels of 4 cm."""
    torch.manual_seed(3)
    grid = VoxelGrid(shape=(32, 32, 8), voxel_size=0.04, origin=(-0.64, -0.64, 0.0))
    scene_model = SceneModel(grid=grid, feature_channels=8, backbone_channels=(8, 8, 16, 16), feature_dim=16)
    detector = OddOneOutDetector(scene_model, k=3, heads=2, blocks=1, dim=16, roi_size=4, box_head=True,
                                 box_head_resolution=8, box_head_channels=16, **kwargs).eval()
    return detector, _block_scene(detector, [((2, 3, 0), (8, 6, 4)), ((20, 20, 0), (23, 29, 3))])


def test_propose_boxes_read_the_carved_hull_only():
    """The detector's proposals leave out the dilation shell even where the shell is dense: the carved hull
    (the occupancy) bounds them, 6 x 3 x 4 voxels as built, not a voxel more on each side."""
    detector, _ = _box_head_scene()
    grid = detector.scene_model.grid
    fields = _fields_with_blocks(grid, [((2, 3, 0), (8, 6, 4))])
    n = fields.voxels.num_voxels
    inside = ((fields.voxels.coords[:, 1:] >= torch.tensor([2, 3, 0])) &
              (fields.voxels.coords[:, 1:] < torch.tensor([8, 6, 4]))).all(dim=1)
    fields = VoxelFields(fields.voxels.replace(feats=torch.cat([torch.full((n, 1), 200.0), torch.rand(n, 3 + 16)], 1)))
    from oddsparse.models.scene_model import SceneOutput

    scene = SceneOutput(occupancy=fields.voxels.replace(feats=inside.float()[:, None]),
                        volume=fields.voxels.replace(feats=torch.randn(n, 8)), fields=fields, foreground_logits=None)
    boxes, scene_index = detector.propose_boxes(scene)
    assert scene_index.tolist() == [0]
    sizes = torch.sort(boxes.size[0, :2], descending=True).values
    assert torch.allclose(sizes, torch.tensor([6.0, 3.0]) * 0.04, atol=1e-5)
    assert torch.allclose(boxes.size[0, 2], torch.tensor(4 * 0.04), atol=1e-5)


def test_box_head_refines_and_filters_the_proposals():
    detector, scene = _box_head_scene()
    scene_model = detector.scene_model
    proposals, index = detector.propose_boxes(scene)
    assert proposals.center.shape[0] == 2
    assert detector.proposal_volumes(scene, proposals, index).shape == (2, 8 + 2, 8, 8, 8)
    # a fresh head changes nothing (zero deltas, objectness 1/2 kept at the threshold 1/2)
    found, found_index = detector.find_boxes(scene)
    assert found.center.shape[0] == 2 and torch.equal(found_index, index)
    assert torch.allclose(box_iou_3d(found, proposals).diagonal().float(), torch.ones(2), atol=1e-5)
    # bias the head: heights halved (log size ratio of z), centres moved down a quarter of the height
    last = detector.box_head.mlp[-1]
    with torch.no_grad():
        last.bias[5] = math.log(0.5)
        last.bias[2] = -0.25
    found, _ = detector.find_boxes(scene)
    assert torch.allclose(found.size[:, 2], proposals.size[:, 2] / 2, atol=1e-5)
    assert torch.allclose(found.center[:, 2], proposals.center[:, 2] - proposals.size[:, 2] / 4, atol=1e-5)
    bottom = found.center[:, 2] - found.size[:, 2] / 2
    assert torch.allclose(bottom, proposals.center[:, 2] - proposals.size[:, 2] / 2, atol=1e-5)  # still on the floor
    # box_delta_scale: the same deltas, scaled: half of log(1/2) is a height ratio of 1/sqrt(2), half of the
    # quarter-height move an eighth; 0 gives the proposals back; the returned deltas are those applied
    detector.box_delta_scale = 0.5
    half, _, _, applied = detector.refine_boxes(scene, proposals, index, return_deltas=True)
    assert torch.allclose(half.size[:, 2], proposals.size[:, 2] / math.sqrt(2), atol=1e-5)
    assert torch.allclose(half.center[:, 2], proposals.center[:, 2] - proposals.size[:, 2] / 8, atol=1e-5)
    assert torch.allclose(applied[:, 5], torch.full((2,), 0.5 * math.log(0.5)), atol=1e-5)
    detector.box_delta_scale = 0.0
    same, _ = detector.find_boxes(scene)
    assert torch.allclose(box_iou_3d(same, proposals).diagonal().float(), torch.ones(2), atol=1e-5)
    detector.box_delta_scale = 1.0
    with pytest.raises(ValueError, match="box_delta_scale"):
        OddOneOutDetector(scene_model, box_delta_scale=-0.5)
    # objectness below the threshold drops every box; keep_all keeps them with their probabilities
    with torch.no_grad():
        last.bias[7] = -3.0
    assert detector.find_boxes(scene)[0].center.shape[0] == 0
    kept, _, probability = detector.refine_boxes(scene, proposals, index, keep_all=True)
    assert kept.center.shape[0] == 2 and torch.allclose(probability, torch.sigmoid(torch.tensor(-3.0)).expand(2))
    threshold = detector.objectness_threshold  # kept_proposals: at or above the threshold
    assert detector.kept_proposals(torch.tensor([threshold - 1e-3, threshold, 0.99])).tolist() == [False, True, True]
    # return_deltas: the head's raw deltas of the returned boxes (the biases set above), zeros without a box
    again, _, _, deltas = detector.refine_boxes(scene, proposals, index, keep_all=True, return_deltas=True)
    assert torch.equal(again.size, kept.size) and deltas.shape == (2, 7)
    assert torch.allclose(deltas[:, 5], torch.full((2,), math.log(0.5)), atol=1e-5)
    assert torch.allclose(deltas[:, 2], torch.full((2,), -0.25), atol=1e-5)
    assert detector.refine_boxes(scene, proposals, index, return_deltas=True)[3].shape == (0, 7)  # all dropped
    none = YawBoxes(*(t[:0] for t in proposals))
    assert detector.refine_boxes(scene, none, index[:0], return_deltas=True)[3].shape == (0, 7)


def test_token_patch_reads_each_patch_of_cells_as_one_token():
    """roi_size 8, token_patch 2: the matcher scores 4^3 tokens built here by a loop over patches (a token where
    any of its 8 cells is above the threshold, carrying their F_v and beta), with the distances of the 8^3 volumes."""
    torch.manual_seed(6)
    grid = VoxelGrid(shape=(16, 16, 8), voxel_size=0.04, origin=(-0.32, -0.32, 0.0))
    scene_model = SceneModel(grid=grid, feature_channels=8, backbone_channels=(8, 8, 16, 16), feature_dim=16)
    detector = OddOneOutDetector(scene_model, variant="full", k=3, heads=2, blocks=1, dim=16, roi_size=8,
                                 token_patch=2, matcher_distance_input=True).eval()
    assert detector.matcher.resolution == 4 and detector.matcher.input.in_features == 8 * 8
    volumes = torch.randn(4, 8 + 16 + 1, 8, 8, 8, requires_grad=True)
    opacity = torch.rand(4, 8, 8, 8) ** 4  # most patches empty, some not
    opacity[2] = 0.0  # an object without tokens
    volumes.data[:, -1] = opacity
    scene_index = torch.tensor([0, 0, 0, 1])
    feats, beta, cells, owner = [], [], [], []
    for o in range(4):
        for i, j, k in torch.cartesian_prod(*[torch.arange(4)] * 3).tolist():
            patch = (o, slice(None), slice(2 * i, 2 * i + 2), slice(2 * j, 2 * j + 2), slice(2 * k, 2 * k + 2))
            if bool((volumes[patch][-1] > detector.density_threshold).any()):
                feats.append(volumes[patch][:8].reshape(-1))
                beta.append(volumes[patch][8:-1].reshape(-1))
                cells.append([i, j, k])
                owner.append(o)
    tokens = ObjectTokens(feats=torch.stack(feats), cells=torch.tensor(cells), object_index=torch.tensor(owner),
                          scene_index=scene_index, beta=torch.stack(beta), resolution=4)
    assert 0 < tokens.num_tokens < 3 * 64
    expected = detector.matcher(tokens, detector.distance_inputs(volumes, scene_index))
    logits, num_tokens = detector.score_volumes(volumes, scene_index)
    assert torch.allclose(logits, expected, atol=1e-6)
    assert num_tokens.tolist() == torch.bincount(tokens.object_index, minlength=4).tolist()
    grad, = torch.autograd.grad(logits.sum(), volumes)
    grad_expected, = torch.autograd.grad(expected.sum(), volumes)
    assert torch.allclose(grad, grad_expected, atol=1e-6) and bool(grad[:, :8].abs().sum() > 0)
    with pytest.raises(ValueError, match="token_patch must be >= 1 and divide roi_size=8"):
        OddOneOutDetector(scene_model, roi_size=8, token_patch=3)


def test_token_features_all_feeds_beta_and_opacity_to_the_matcher():
    torch.manual_seed(4)
    grid = VoxelGrid(shape=(16, 16, 8), voxel_size=0.04, origin=(-0.32, -0.32, 0.0))
    volumes = torch.randn(3, 8 + 16 + 1, 4, 4, 4)
    volumes[:, -1] = torch.rand(3, 4, 4, 4)  # opacity
    index = torch.zeros(3, dtype=torch.int64)
    changed = volumes.clone()
    changed[:, 8:-1] += 1.0  # beta only (same opacity: same tokens)
    logits = {}
    for features in ("volume", "all"):
        torch.manual_seed(5)
        scene_model = SceneModel(grid=grid, feature_channels=8, backbone_channels=(8, 8, 16, 16), feature_dim=16)
        detector = OddOneOutDetector(scene_model, variant="A", heads=2, blocks=1, dim=16, roi_size=4,
                                     token_features=features).eval()
        assert detector.matcher.input.in_features == (8 if features == "volume" else 8 + 16 + 1)
        with torch.no_grad():
            logits[features] = (detector.score_volumes(volumes, index)[0], detector.score_volumes(changed, index)[0])
    assert torch.equal(*logits["volume"])  # the paper's tokens: F_v alone, beta does not reach the matcher
    assert not torch.allclose(*logits["all"])
    with pytest.raises(ValueError, match="token_features"):
        OddOneOutDetector(SceneModel(grid=grid, feature_channels=8, backbone_channels=(8, 8, 16, 16), feature_dim=16),
                          token_features="beta")


def test_box_nms_keeps_one_of_the_boxes_fragments_grow_to():
    """box_nms_iou: refined boxes of a scene that overlap above it are suppressed (the one of higher objectness
    stays); 0 keeps them all; applied before the scene consensus."""
    detector, scene = _box_head_scene()
    scene_model = detector.scene_model
    proposals, index = detector.propose_boxes(scene)
    # each proposal twice, the copy nudged by 1 cm: four boxes, two overlapping pairs
    nudged = YawBoxes(proposals.center + torch.tensor([0.01, 0.0, 0.0]), proposals.size, proposals.yaw)
    boxes = YawBoxes(*(torch.cat([a, b]) for a, b in zip(proposals, nudged)))
    scene_index = torch.cat([index, index])
    volumes = detector.proposal_volumes(scene, boxes, scene_index)
    assert detector.boxes_from_proposals(boxes, scene_index, volumes)[0].center.shape[0] == 4
    detector.box_nms_iou = 0.5
    kept, kept_scene = detector.boxes_from_proposals(boxes, scene_index, volumes)
    assert kept.center.shape[0] == 2 and torch.allclose(kept.center, proposals.center)  # ties: the first kept
    # the objectness decides which of a pair stays: the copy of proposal 0, proposal 1
    refine = detector.refine_from_volumes
    detector.refine_from_volumes = lambda *args, **kwargs: (*refine(*args, **kwargs)[:2],
                                                            torch.tensor([0.6, 0.8, 0.9, 0.7]))
    kept, _ = detector.boxes_from_proposals(boxes, scene_index, volumes)
    assert torch.allclose(kept.center, torch.stack([proposals.center[1], nudged.center[0]]))  # in proposal order
    with pytest.raises(ValueError, match="box_nms_iou"):
        OddOneOutDetector(scene_model, box_nms_iou=1.5)


def test_size_input_box_head_reads_each_proposal_size_in_metres(tmp_path):
    """box_head_size_input: the detector hands the head each proposal's size (the hull's box, in metres) and its
    voxel edge as the size unit; a checkpoint rebuilds the head."""
    detector, scene = _box_head_scene(box_head_size_input=True)
    assert detector.box_head.size_input and detector.box_head.size_unit == 0.04
    proposals, index = detector.propose_boxes(scene)
    seen = []
    handle = detector.box_head.register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))
    detector.find_boxes(scene)
    handle.remove()
    assert torch.allclose(seen[0], proposals.size.float())
    assert sorted(round(float(h) / 0.04) for h in seen[0][:, 2]) == [3, 4]
    # the head's answer depends on the sizes: a bias on the height input's column changes the heights
    with torch.no_grad():
        detector.box_head.mlp[-1].bias[5] = 0.0
        detector.box_head.mlp[-1].weight.zero_()
        detector.box_head.mlp[-1].weight[5, 0] = 1.0  # log height ratio = first hidden unit
        detector.box_head.mlp[0].weight.zero_()
        detector.box_head.mlp[0].bias.zero_()
        detector.box_head.mlp[0].weight[0, -1] = -0.1  # hidden unit 0 = GELU(-0.1 log(height / voxel))
    found, _ = detector.find_boxes(scene)
    units = proposals.size[:, 2] / 0.04
    expected = proposals.size[:, 2] * torch.exp(torch.nn.functional.gelu(-0.1 * torch.log(units)))
    assert torch.allclose(found.size[:, 2].sort().values, expected.sort().values.float(), atol=1e-5)
    scene_kwargs = {"grid": {"shape": [16, 16, 8], "voxel_size": 0.05, "origin": [-0.4, -0.4, 0.0]},
                    "feature_channels": 8, "backbone_channels": [8, 8, 16, 16], "feature_dim": 16}
    detector_kwargs = {"variant": "A", "dim": 16, "heads": 2, "blocks": 1, "roi_size": 4, "box_head": True,
                       "box_head_resolution": 4, "box_head_channels": 8, "box_head_size_input": True}
    saved = build_detector(scene_kwargs, detector_kwargs)
    save_checkpoint(tmp_path / "d.pt", {"scene_kwargs": scene_kwargs, "detector_kwargs": detector_kwargs,
                                        "model": saved.state_dict()})
    loaded, _ = load_detector(tmp_path / "d.pt")
    assert loaded.box_head.size_input and loaded.box_head.size_unit == 0.05
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), loaded.state_dict().values()))


def test_geometry_box_head_survives_a_checkpoint_round_trip(tmp_path):
    """box_head_inputs="geometry" is a detector kwarg: a checkpoint rebuilds the 2-channel head it trained."""
    torch.manual_seed(1)
    scene_kwargs = {"grid": {"shape": [16, 16, 8], "voxel_size": 0.05, "origin": [-0.4, -0.4, 0.0]},
                    "feature_channels": 8, "backbone_channels": [8, 8, 16, 16], "feature_dim": 16}
    detector_kwargs = {"variant": "A", "dim": 16, "heads": 2, "blocks": 1, "roi_size": 4, "box_head": True,
                       "box_head_resolution": 4, "box_head_channels": 8, "box_head_inputs": "geometry"}
    detector = build_detector(scene_kwargs, detector_kwargs)
    assert detector.box_head.inputs == "geometry" and detector.box_head.cnn[0].in_channels == 2
    save_checkpoint(tmp_path / "d.pt", {"scene_kwargs": scene_kwargs, "detector_kwargs": detector_kwargs,
                                        "model": detector.state_dict()})
    loaded, _ = load_detector(tmp_path / "d.pt")
    assert loaded.box_head.inputs == "geometry"
    assert all(torch.equal(a, b) for a, b in zip(detector.state_dict().values(), loaded.state_dict().values()))


def _colour_views(colours, views=3, size=32):
    """Views of constant colours, one per scene: images (B, M, H, W, 3) uint8, K, world_to_cam."""
    w2c = orbit_cameras(views, radius=1.2, elevation_deg=35.0, target=(0.0, 0.0, 0.1)).float()
    images = torch.tensor(colours, dtype=torch.uint8)[:, None, None, None].expand(-1, views, size, size, 3)
    return (images.contiguous(), default_intrinsics(size).expand(len(colours), views, 3, 3).contiguous(),
            w2c.expand(len(colours), views, 4, 4).contiguous())


def test_view_colour_volumes_read_each_scenes_own_views_and_pack_like_one_scene():
    """Two scenes of blocks (the second's sparse rows in batch entry 1), views of one constant colour each: every
    cell some view sees reads its own scene's colour times its visibility, and a scene's volumes are the same
    alone as in the batch; the colour group sits before the opacity, which stays the last channel."""
    from oddsparse.models.scene_model import SceneOutput

    torch.manual_seed(6)
    grid = VoxelGrid(shape=(16, 16, 8), voxel_size=0.04, origin=(-0.32, -0.32, 0.0))
    scene_model = SceneModel(grid=grid, feature_channels=8, backbone_channels=(8, 8, 16, 16), feature_dim=16)
    detector = OddOneOutDetector(scene_model, k=3, heads=2, blocks=1, dim=16, roi_size=4, view_colour=True,
                                 matcher_distance_input=True, token_features="all").eval()
    blocks = [[((3, 3, 0), (6, 6, 3))], [((9, 9, 0), (12, 13, 2))]]
    scenes = []
    for b, block in enumerate(blocks):
        fields = _fields_with_blocks(grid, block)
        n = fields.voxels.num_voxels
        fields = VoxelFields(fields.voxels.replace(feats=torch.cat([fields.voxels.feats[:, :4], torch.randn(n, 16)], 1)))
        scenes.append(SceneOutput(occupancy=fields.voxels.replace(feats=torch.ones(n, 1)),
                                  volume=fields.voxels.replace(feats=torch.randn(n, 8)), fields=fields,
                                  foreground_logits=None, views=_colour_views([(40, 120, 200)]) if b == 0 else
                                  _colour_views([(250, 10, 90)])))

    images, K, w2c = (torch.cat(parts) for parts in zip(*(s.views for s in scenes)))
    batch = SceneOutput(occupancy=SparseVoxels.cat([s.occupancy for s in scenes]),  # scene indices offset
                        volume=SparseVoxels.cat([s.volume for s in scenes]),
                        fields=VoxelFields(SparseVoxels.cat([s.fields.voxels for s in scenes])),
                        foreground_logits=None, views=(images, K, w2c))
    boxes = [YawBoxes(torch.tensor([[-0.14, -0.14, 0.06], [0.1, -0.2, 0.04]]), torch.full((2, 3), 0.12), torch.zeros(2)),
             YawBoxes(torch.tensor([[0.1, 0.12, 0.04]]), torch.tensor([[0.12, 0.16, 0.08]]), torch.tensor([0.4]))]
    alone = [detector.object_volumes(s, bx, torch.zeros(len(bx.yaw), dtype=torch.int64)) for s, bx in zip(scenes, boxes)]
    together = detector.object_volumes(batch, YawBoxes(*(torch.cat(t) for t in zip(*boxes))),
                                       torch.tensor([0, 0, 1]))
    torch.testing.assert_close(together, torch.cat(alone))
    assert together.shape == (3, 8 + 16 + 4 + 1, 4, 4, 4)
    parts = detector.volume_parts(together)
    assert set(parts) == {"F_v", "beta", "colour", "opacity"} and parts["colour"].shape == (3, 4, 4, 4, 4)
    plain = OddOneOutDetector(scene_model, k=3, heads=2, blocks=1, dim=16, roi_size=4)
    torch.testing.assert_close(parts["opacity"], plain.volume_parts(plain.object_volumes(
        batch, YawBoxes(*(torch.cat(t) for t in zip(*boxes))), torch.tensor([0, 0, 1])))["opacity"])
    visibility = parts["colour"][:, 3:]
    assert (visibility >= 0).all() and (visibility <= 1 + 1e-6).all() and (visibility > 0.5).any()
    seen = visibility[:, 0] > 1e-4
    for o, colour in enumerate([(40, 120, 200), (40, 120, 200), (250, 10, 90)]):
        rgb = parts["colour"][o, :3] / visibility[o].clamp(min=1e-12)  # premultiplied by the visibility
        torch.testing.assert_close(rgb[:, seen[o]], torch.tensor(colour, dtype=torch.float32)[:, None].expand(
            3, int(seen[o].sum())) / 255.0, atol=1e-4, rtol=1e-4)
    # the block of scene 0 hides its inside: a cell inside the first box sees less than one in free space
    assert visibility[0, 0, 1:3, 1:3, 0:2].mean() < visibility[1, 0].mean()
    # the matcher reads it: token channels and a fourth distance column
    assert detector.matcher.input.in_features == 8 + 16 + 4 + 1
    assert detector.distance_inputs(together, torch.tensor([0, 0, 1])).shape == (3, 4)
    with torch.no_grad():
        assert detector.score_volumes(together, torch.tensor([0, 0, 1]))[0].shape == (3,)
    with pytest.raises(ValueError, match="view_colour needs the input views"):
        detector.object_volumes(SceneOutput(occupancy=scenes[0].occupancy, volume=scenes[0].volume,
                                            fields=scenes[0].fields, foreground_logits=None), boxes[0],
                                torch.zeros(2, dtype=torch.int64))


def test_view_colour_detector_runs_end_to_end_and_round_trips(tmp_path):
    torch.manual_seed(7)
    grid = VoxelGrid(shape=(16, 16, 8), voxel_size=0.04, origin=(-0.32, -0.32, 0.0))
    scene_kwargs = {"grid": {"shape": list(grid.shape), "voxel_size": grid.voxel_size, "origin": list(grid.origin)},
                    "feature_channels": 8, "backbone_channels": [8, 8, 16, 16], "feature_dim": 16}
    detector_kwargs = {"k": 3, "heads": 2, "blocks": 1, "dim": 16, "roi_size": 4, "view_colour": True,
                       "matcher_distance_input": True}
    detector = build_detector(scene_kwargs, detector_kwargs).eval()
    images, K, w2c = _colour_views([(90, 90, 90)])
    images = torch.randint(0, 255, images.shape, dtype=torch.uint8)
    masks = torch.zeros(1, 3, 32, 32, dtype=torch.bool)
    masks[..., 8:24, 6:26] = True
    boxes = YawBoxes(torch.tensor([[-0.1, -0.1, 0.06], [0.1, 0.1, 0.06]]), torch.full((2, 3), 0.12), torch.zeros(2))
    with torch.no_grad():
        detection = detector(images, K, w2c, carve_masks=masks, boxes=(boxes, torch.zeros(2, dtype=torch.int64)))
    assert detection.logits.shape == (2,) and detection.scene.views[0] is images
    save_checkpoint(tmp_path / "d.pt", {"scene_kwargs": scene_kwargs, "detector_kwargs": detector_kwargs,
                                        "model": detector.state_dict()})
    loaded, _ = load_detector(tmp_path / "d.pt")
    assert loaded.view_colour and loaded.distance_groups == ("opacity", "F_v", "beta", "colour")
    with torch.no_grad():
        again = loaded(images, K, w2c, carve_masks=masks, boxes=(boxes, torch.zeros(2, dtype=torch.int64)))
    torch.testing.assert_close(again.logits, detection.logits)
