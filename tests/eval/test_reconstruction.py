"""Stage-1 metrics against hand-computed values, GT object voxels, the evaluation loop and the figure."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from oddsparse.data import SceneDataset
from oddsparse.data.scene_io import read_scene
from oddsparse.eval.reconstruction import (carving_stats, evaluate_reconstruction, figure_reconstruction,
                                           gt_object_voxels, mask_iou, pca_rgb, psnr, render_targets)
from oddsparse.geometry.grid import VoxelGrid
from oddsparse.structures.scene import Boxes, Scene
from oddsparse.structures.sparse import SparseVoxels
from reference_eval import tiny_dataset, tiny_detector


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.getbasetemp())


def test_psnr_of_known_errors():
    gt = torch.full((2, 3, 4, 4), 0.1)
    assert float(psnr(torch.zeros_like(gt), gt)) == pytest.approx(20.0)  # MSE 0.01
    assert float(psnr(torch.zeros_like(gt), gt * 255, max_value=255.0)) == pytest.approx(20.0)
    # masked: the error is 0.01 (MSE 1e-4 -> 40 dB) inside the mask and large outside it
    pred = torch.full_like(gt, 0.9)
    mask = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    mask[:, :, :2] = True
    pred[:, :, :2] = 0.11
    assert float(psnr(pred, gt, mask)) == pytest.approx(40.0, abs=1e-4)
    assert math.isinf(float(psnr(gt, gt)))
    assert math.isnan(float(psnr(pred, gt, torch.zeros_like(mask))))


def test_mask_iou_of_known_masks():
    opacity = torch.tensor([[0.9, 0.6, 0.2], [0.4, 0.7, 0.1]])  # > 0.5: (0,0) (0,1) (1,1)
    gt = torch.tensor([[True, False, False], [False, True, True]])
    assert float(mask_iou(opacity, gt)) == pytest.approx(2 / 4)
    assert float(mask_iou(opacity, gt, threshold=0.65)) == pytest.approx(2 / 3)
    assert float(mask_iou(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.bool))) == 1.0


def test_carving_stats_on_a_tiny_grid():
    grid = VoxelGrid(shape=(4, 4, 2), voxel_size=0.1, origin=(0.0, 0.0, 0.0))
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 2, 1, 1], [1, 3, 3, 1]], dtype=torch.int32)
    occupancy = SparseVoxels(coords, torch.ones(4, 1), 2, grid)
    gt = torch.zeros(2, 4, 4, 2, dtype=torch.bool)
    for index in [(0, 0, 0), (2, 1, 1), (3, 3, 0), (1, 1, 1)]:
        gt[(0, *index)] = True
    gt[1, 3, 3, 1] = True
    stats = carving_stats(occupancy, gt)
    assert stats["recall"] == [pytest.approx(2 / 4), pytest.approx(1.0)]
    assert stats["occupancy"] == [pytest.approx(3 / 32), pytest.approx(1 / 32)]
    assert stats["gt_voxels"] == [4, 1] and stats["kept_voxels"] == [3, 1]


def _one_view_scene(depth, masks):
    K = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]])
    box = Boxes(torch.zeros(1, 3), torch.ones(1, 3), torch.eye(3)[None])
    return Scene(images=torch.zeros(1, 2, 2, 3, dtype=torch.uint8), masks=masks, depth=depth, K=K,
                 world_to_cam=torch.eye(4)[None], boxes=box, labels=torch.zeros(1, dtype=torch.int64),
                 anomaly_types=[""], object_names=["a"], name="hand", category="hand",
                 view_ids=torch.zeros(1, dtype=torch.int64))


def test_gt_object_voxels_by_hand():
    # camera at the origin looking along +z; pixel (0, 0) -> ray (-0.5, -0.5, 1), pixel (1, 1) -> (0.5, 0.5, 1)
    depth = torch.tensor([[[1.0, 1.0], [math.inf, 1.0]]])
    masks = torch.tensor([[[[True, False], [True, True]]]])  # (1 object, 1 view, 2, 2); (1, 0) has no depth
    grid = VoxelGrid(shape=(4, 4, 4), voxel_size=0.5, origin=(-1.0, -1.0, 0.0))
    voxels = gt_object_voxels(_one_view_scene(depth, masks), grid)
    assert sorted(map(tuple, torch.nonzero(voxels).tolist())) == [(1, 1, 2), (3, 3, 2)]


def test_gt_object_voxels_lie_in_the_object_boxes(tiny_root):
    scene = read_scene(sorted(p for p in tiny_root.iterdir() if p.is_dir())[0])
    grid = VoxelGrid(shape=(32, 32, 8), voxel_size=0.04, origin=(-0.64, -0.64, 0.0))
    voxels = gt_object_voxels(scene, grid)
    centres = grid.voxel_centers(torch.nonzero(voxels))  # (P, 3)
    offsets = centres[:, None] - scene.boxes.center[None]  # (P, O, 3)
    local = torch.einsum("poi,oij->poj", offsets, scene.boxes.rotation)  # in the box frames
    slack = grid.voxel_size * math.sqrt(3) / 2 + 1e-4  # a voxel's centre is within this of any point in it
    inside = (local.abs() <= scene.boxes.size[None] / 2 + slack).all(dim=-1)  # (P, O)
    assert inside.any(dim=1).all()
    assert (inside.sum(dim=0) >= 5).all()  # every object has surface voxels


def test_pca_rgb_recovers_the_main_direction():
    torch.manual_seed(0)
    coordinate = torch.linspace(-1, 1, 16)
    direction = torch.nn.functional.normalize(torch.randn(8), dim=0)
    features = coordinate[:, None] * direction * 5 + 0.01 * torch.randn(16, 8)  # (P, F)
    maps = features.T.reshape(1, 8, 4, 4)
    weights = torch.ones(1, 4, 4, dtype=torch.bool)
    weights[0, 0, 0] = False
    colours = pca_rgb(maps, weights)  # (1, 4, 4, 3)
    first = colours[0, ..., 0].reshape(-1)[1:]
    expected = (coordinate[1:] - coordinate[1]) / (coordinate[-1] - coordinate[1])
    assert torch.allclose(first, expected, atol=0.01) or torch.allclose(first, 1 - expected, atol=0.01)
    assert torch.equal(colours[0, 0, 0], torch.zeros(3))  # unselected pixels are black
    assert colours.min() >= 0 and colours.max() <= 1


def test_evaluate_reconstruction_and_figure(tiny_root, tmp_path):
    scene_model = tiny_detector().scene_model
    dataset = SceneDataset(tiny_root, "all", num_input_views=3, num_target_views=2)
    predicted = evaluate_reconstruction(scene_model, dataset, num_samples=8, render_size=(16, 16), progress=False)
    masked = evaluate_reconstruction(scene_model, dataset, num_samples=16, render_size=(32, 32), carve_masks=True,
                                     progress=False)
    for report in (predicted, masked):
        assert report["num_scenes"] == 2 and len(report["per_scene"]) == 2
        assert math.isfinite(report["psnr"]) and math.isfinite(report["psnr_object"])
        assert 0.0 <= report["mask_iou"] <= 1.0
    # each scene's PSNR (all pixels, object pixels) and mask IoU, recomputed in numpy from its renders
    for index, row in enumerate(predicted["per_scene"]):
        item = dataset[index]
        result = render_targets(scene_model, item["inputs"], item["targets"], num_samples=8, render_size=(16, 16))
        rgb, image = result["rgb"].clamp(0, 1).double().numpy(), result["image"].double().numpy()
        mask, seen = result["mask"].numpy(), result["opacity"].numpy() > 0.5
        error = (rgb - image) ** 2  # (T, 3, h, w)
        assert row["psnr"] == pytest.approx(-10 * np.log10(error.mean()), rel=1e-6)
        assert row["psnr_object"] == pytest.approx(-10 * np.log10(error.transpose(1, 0, 2, 3)[:, mask].mean()),
                                                   rel=1e-6)
        assert 0 < mask.mean() < 1 and 0 < seen.mean() < 1  # both masks hold pixels of either kind
        assert row["mask_iou"] == pytest.approx((seen & mask).sum() / (seen | mask).sum(), rel=1e-6)
    # carving the GT masks keeps the objects' surface voxels (the two conventions agree) and much less space
    assert masked["carving_recall"] > 0.9
    assert masked["carving_occupancy"] < predicted["carving_occupancy"]
    # the biased untrained head calls every pixel foreground: the carving keeps what the views see
    assert predicted["carving_recall"] == pytest.approx(1.0)

    item = dataset[0]
    path = figure_reconstruction(scene_model, item["inputs"], item["targets"], tmp_path / "docs" / "fig.png",
                                 num_samples=8, render_size=(32, 32), carve_masks=True)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[1] > image.size[0] > 200  # 5 rows x 2 views
