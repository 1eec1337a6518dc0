"""Stage-1 (scene model) evaluation: novel-view PSNR, mask IoU, carving recall and occupancy, figure.

Metrics
    * ``psnr``: ``10 log10(max_value^2 / MSE)`` of rendered against real colours. The scene model
      only carves and renders the objects (composited over a black background), so the real target
      is the image with its background set to black (``image * mask``): :func:`evaluate_reconstruction`
      reports that over the whole image (``psnr``) and inside the GT object masks only
      (``psnr_object``).
    * ``mask_iou``: IoU of the rendered opacity thresholded at 0.5 with the union of the GT object masks.
    * ``carving_recall`` / ``carving_occupancy``: of the predicted-foreground carving (what the model
      uses at test time). **GT object voxels** are the grid voxels that contain a depth back-projected
      point of an object pixel in *any* stored view of the scene (:func:`gt_object_voxels`), i.e. the
      voxels on the objects' visible surfaces. We use depth rather than carving the GT masks of all
      views because a visual hull, even from 20 views, contains empty voxels between and around the
      objects, which would reward carving that keeps empty space; depth points lie on the objects.
      Recall is the fraction of these voxels kept; occupancy the fraction of the whole grid kept.

Shapes follow the glossary of :mod:`oddsparse` (V views, T render-target views, H/W image size,
X/Y/Z grid axes, F feature channels).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import Tensor

from oddsparse.geometry.cameras import unproject_depth
from oddsparse.geometry.grid import VoxelGrid
from oddsparse.structures.scene import Scene
from oddsparse.structures.sparse import SparseVoxels
from oddsparse.utils.figures import save_figure

__all__ = ["psnr", "mask_iou", "gt_object_voxels", "carving_stats", "render_targets", "pca_rgb",
           "evaluate_reconstruction", "figure_reconstruction"]


def psnr(pred: Tensor, gt: Tensor, mask: Tensor | None = None, max_value: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB over all elements (or the masked ones).

    Args:
        pred, gt: tensors of one shape, e.g. (V, 3, H, W) colours in [0, max_value].
        mask: optional bool/0-1 tensor broadcastable to ``pred`` (e.g. (V, 1, H, W)); only elements
            where it is true count.
        max_value: the peak value (1.0 for colours in [0, 1], 255 for uint8).
    Returns:
        0-dim tensor; ``inf`` when the images are equal, ``nan`` when the mask selects nothing.

    Example:
        >>> round(float(psnr(torch.zeros(4), torch.full((4,), 0.1))), 4)  # MSE 0.01 -> 20 dB
        20.0
    """
    if pred.shape != gt.shape:
        raise ValueError(f"psnr: pred shape {tuple(pred.shape)} != gt shape {tuple(gt.shape)}")
    error = (pred.double() - gt.double()).square()
    if mask is None:
        mse = error.mean()
    else:
        weight = torch.broadcast_to(mask.to(error.dtype), error.shape)
        count = weight.sum()
        mse = (error * weight).sum() / count if count > 0 else error.new_tensor(math.nan)
    return (10.0 * torch.log10(max_value ** 2 / mse)).float()


def mask_iou(pred_opacity: Tensor, gt_mask: Tensor, threshold: float = 0.5) -> Tensor:
    """IoU of ``pred_opacity > threshold`` with ``gt_mask`` (same shapes, e.g. (V, H, W)).

    Returns a 0-dim tensor; 1 when both masks are empty.
    """
    if pred_opacity.shape != gt_mask.shape:
        raise ValueError(f"mask_iou: pred shape {tuple(pred_opacity.shape)} != gt shape {tuple(gt_mask.shape)}")
    pred = pred_opacity > threshold
    gt = gt_mask.bool() if gt_mask.dtype == torch.bool else gt_mask > 0.5
    union = (pred | gt).sum()
    if union == 0:
        return torch.tensor(1.0)
    return (pred & gt).sum().float() / union.float()


def gt_object_voxels(scene: Scene, grid: VoxelGrid) -> Tensor:
    """(X, Y, Z) bool: grid voxels containing a depth back-projected point of an object pixel of any view.

    Object pixels are the union of the scene's object masks with a finite depth; points outside the
    grid are ignored.
    """
    points, valid = unproject_depth(scene.depth.double(), scene.K.double(), scene.world_to_cam.double())  # (V, H, W, 3)
    objects = scene.masks.any(dim=0) & valid  # (V, H, W)
    index = grid.world_to_index(points[objects])  # (P, 3)
    index = index[grid.contains_index(index)]
    occupied = torch.zeros(grid.num_voxels, dtype=torch.bool)
    occupied[grid.linear_index(index).cpu()] = True
    return occupied.reshape(grid.shape)


def carving_stats(occupancy: SparseVoxels, gt_voxels: Tensor) -> dict[str, list[float]]:
    """Carving recall and occupancy per scene of the batch.

    Args:
        occupancy: carved :class:`SparseVoxels` of B scenes (every present site counts as kept).
        gt_voxels: (B, X, Y, Z) or (X, Y, Z) (B = 1) bool GT object voxels (see :func:`gt_object_voxels`).
    Returns:
        ``{"recall": [B floats], "occupancy": [B floats], "gt_voxels": [B ints], "kept_voxels": [B ints]}``;
        recall is ``nan`` for a scene without GT voxels.
    """
    grid = occupancy.grid
    if gt_voxels.dim() == 3:
        gt_voxels = gt_voxels[None]
    if tuple(gt_voxels.shape[1:]) != grid.shape or gt_voxels.shape[0] != occupancy.batch_size:
        raise ValueError(f"carving_stats: gt_voxels must be (B={occupancy.batch_size}, {grid.shape}), "
                         f"got {tuple(gt_voxels.shape)}")
    kept = torch.zeros(occupancy.batch_size, grid.num_voxels, dtype=torch.bool)
    coords = occupancy.coords.long().cpu()
    kept[coords[:, 0], grid.linear_index(coords[:, 1:])] = True
    gt = gt_voxels.reshape(occupancy.batch_size, -1).cpu().bool()
    hits, total, kept_count = (kept & gt).sum(1), gt.sum(1), kept.sum(1)
    recall = [float(h) / float(t) if t > 0 else math.nan for h, t in zip(hits.tolist(), total.tolist())]
    return {"recall": recall, "occupancy": [float(k) / grid.num_voxels for k in kept_count.tolist()],
            "gt_voxels": total.tolist(), "kept_voxels": kept_count.tolist()}


@torch.no_grad()
def render_targets(scene_model, inputs: Scene, targets: Scene, *, num_samples: int = 64,
                   render_size: tuple[int, int] | None = None, carve_masks: bool = False) -> dict:
    """Run ``scene_model`` on the input views of one scene and render its target views.

    Args:
        scene_model: a :class:`~oddsparse.models.scene_model.SceneModel`, run in the mode it is in, without
            gradients (pass an eval-mode model where it has batch norm, as the callers do).
        inputs, targets: the M input and T target views of one scene.
        num_samples: S samples per ray. render_size: (h, w), default the target image size.
        carve_masks: carve with the GT masks of the inputs instead of the predicted foreground.
    Returns:
        dict with the renders ``rgb`` (T, 3, h, w), ``opacity`` (T, h, w), ``features`` (T, F, h, w),
        the real ``image`` (T, 3, h, w) in [0, 1] with black background, ``mask`` (T, h, w) bool,
        and the scene model's ``output`` (:class:`SceneOutput`).
    """
    device = next(scene_model.parameters()).device
    masks = inputs.masks.any(dim=0)[None].float().to(device) if carve_masks else None  # (1, M, H, W)
    output = scene_model(inputs.images[None].to(device), inputs.K[None].to(device),
                         inputs.world_to_cam[None].to(device), carve_masks=masks)
    size = tuple(render_size) if render_size is not None else targets.image_size
    rendered = scene_model.render(output.fields, targets.K[None].to(device), targets.world_to_cam[None].to(device),
                                  targets.image_size, size, num_samples=num_samples)
    image = targets.images.permute(0, 3, 1, 2).float() / 255.0  # (T, 3, H, W)
    mask = targets.masks.any(dim=0)  # (T, H, W)
    if size != targets.image_size:
        image = torch.nn.functional.interpolate(image, size=size, mode="bilinear", antialias=True,
                                                align_corners=False)
        mask = torch.nn.functional.interpolate(mask[:, None].float(), size=size, mode="nearest-exact")[:, 0] > 0.5
    image = image * mask[:, None]
    return {"rgb": rendered["rgb"].cpu().float(), "opacity": rendered["opacity"].cpu().float(),
            "features": rendered["features"].cpu().float(), "image": image, "mask": mask, "output": output}


def pca_rgb(features: Tensor, weights: Tensor | None = None) -> Tensor:
    """First 3 principal components of feature maps as colours (paper Fig. 4).

    Args:
        features: (V, F, h, w) rendered features.
        weights: optional (V, h, w) bool pixels to fit the PCA on and to show (default all);
            other pixels are black.
    Returns:
        (V, h, w, 3) float in [0, 1]; each component is min-max scaled over the selected pixels.
    """
    views, channels, height, width = features.shape
    flat = features.permute(0, 2, 3, 1).reshape(-1, channels).double()  # (V*h*w, F)
    keep = torch.ones(flat.shape[0], dtype=torch.bool) if weights is None else weights.reshape(-1).bool().cpu()
    out = torch.zeros(flat.shape[0], 3, dtype=torch.float64)
    if keep.sum() >= 2 and channels > 0:
        selected = flat[keep]
        centred = selected - selected.mean(dim=0)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        components = centred @ vh[: min(3, vh.shape[0])].T  # (P, <=3)
        low, high = components.min(dim=0).values, components.max(dim=0).values
        out[keep, : components.shape[1]] = (components - low) / (high - low).clamp(min=1e-12)
    return out.reshape(views, height, width, 3).float()


def _mean(values: Iterable[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def evaluate_reconstruction(scene_model, dataset, *, num_samples: int = 64, render_size: tuple[int, int] | None = None,
                            max_scenes: int | None = None, carve_masks: bool = False, progress: bool = True) -> dict:
    """Stage-1 metrics of ``scene_model`` on the scenes of ``dataset``, averaged over scenes.

    Args:
        scene_model: a :class:`~oddsparse.models.scene_model.SceneModel`.
        dataset: a :class:`~oddsparse.data.SceneDataset` with ``num_target_views > 0`` (held-out views).
        num_samples: S samples per ray when rendering. render_size: (h, w), default the image size.
        max_scenes: evaluate only the first scenes. carve_masks: carve with GT input masks (an upper bound).
        progress: show a progress bar.
    Returns:
        ``{"psnr", "psnr_object", "mask_iou", "carving_recall", "carving_occupancy", "num_scenes",
        "num_input_views", "num_target_views", "per_scene": [{"name", ...metrics}]}`` (plain floats).
    """
    from tqdm.auto import tqdm

    from oddsparse.data.scene_io import read_scene

    if dataset.num_target_views < 1:
        raise ValueError("evaluate_reconstruction needs a dataset with num_target_views >= 1 (held-out views)")
    was_training = scene_model.training
    scene_model.eval()
    count = len(dataset) if max_scenes is None else min(len(dataset), max_scenes)
    per_scene = []
    gt_cache: dict[str, Tensor] = {}
    try:
        for index in tqdm(range(count), desc="reconstruction", unit="scene", disable=not progress):
            item = dataset[index]
            inputs, targets = item["inputs"], item["targets"]
            result = render_targets(scene_model, inputs, targets, num_samples=num_samples, render_size=render_size,
                                    carve_masks=carve_masks)
            folder = dataset.scenes[item["index"]]
            if str(folder) not in gt_cache:  # all stored views at the stored resolution
                gt_cache[str(folder)] = gt_object_voxels(read_scene(folder), scene_model.grid)
            carving = carving_stats(result["output"].occupancy, gt_cache[str(folder)])
            mask = result["mask"]
            per_scene.append({
                "name": inputs.name,
                "psnr": float(psnr(result["rgb"].clamp(0, 1), result["image"])),
                "psnr_object": float(psnr(result["rgb"].clamp(0, 1), result["image"], mask[:, None])),
                "mask_iou": float(mask_iou(result["opacity"], mask)),
                "carving_recall": carving["recall"][0],
                "carving_occupancy": carving["occupancy"][0],
            })
    finally:
        scene_model.train(was_training)
    keys = ("psnr", "psnr_object", "mask_iou", "carving_recall", "carving_occupancy")
    report = {key: _mean(scene[key] for scene in per_scene) for key in keys}
    report.update(num_scenes=len(per_scene), num_input_views=dataset.num_input_views,
                  num_target_views=dataset.num_target_views, per_scene=per_scene)
    return report


def figure_reconstruction(scene_model, inputs: Scene, targets: Scene, out_path, *, max_views: int = 4,
                          num_samples: int = 64, render_size: tuple[int, int] | None = None,
                          carve_masks: bool = False, title: str | None = None) -> Path:
    """Write a PNG comparing rendered and real target views (paper Fig. 4).

    Rows: real RGB (black background), rendered RGB, real mask, rendered opacity, and the first 3 PCA
    components of the rendered features as RGB (fitted on the pixels whose opacity exceeds 0.5).
    Columns: up to ``max_views`` target views. Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = targets.select_views(list(range(min(max_views, targets.num_views))))
    result = render_targets(scene_model, inputs, targets, num_samples=num_samples, render_size=render_size,
                            carve_masks=carve_masks)
    foreground = result["opacity"] > 0.5
    features = result["features"]
    if features.shape[1] > 0:
        pca = pca_rgb(features, foreground if foreground.sum() >= 2 else None)
    else:
        pca = torch.zeros(*foreground.shape, 3)
    rows = [("real RGB", result["image"].permute(0, 2, 3, 1)),
            ("rendered RGB", result["rgb"].clamp(0, 1).permute(0, 2, 3, 1)),
            ("real mask", result["mask"].float()), ("rendered opacity", result["opacity"].clamp(0, 1)),
            ("feature PCA", pca)]
    views = targets.num_views
    fig, axes = plt.subplots(len(rows), views, figsize=(2.2 * views, 2.2 * len(rows)), squeeze=False)
    for r, (name, images) in enumerate(rows):
        for v in range(views):
            axis = axes[r, v]
            image = images[v].numpy()
            axis.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if v == 0:
                axis.set_ylabel(name)
            if r == 0:
                axis.set_title(f"view {int(targets.view_ids[v])}", fontsize=9)
    fig.suptitle(title or f"{inputs.name}: {inputs.num_views} input views", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_path, dpi=100)
