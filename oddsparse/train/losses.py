"""Stage-1 reconstruction losses (paper: L_r = sum over target views of L_im + lambda_f L_feat).

``L_im = ||I - I_hat||^2 + lambda_sigma ||M - M_hat||^2`` with squared errors averaged over pixels
(and colour channels), ``L_feat`` the mean cosine distance ``1 - cos`` between rendered and teacher
features. All weights are 1 by default.

Optional, not in the paper: ``lambda_d L_depth``, the mean absolute error in metres between the
rendered (expected, not opacity-normalised) z-depth and the GT depth on pixels that lie entirely
on objects (:func:`depth_loss`). Colour and mask constrain the density only through what each ray
accumulates; with few target views the density fills the visual hull, and boxes estimated from it
are too large. The depth term asks each object ray to stop at the surface.
"""
from __future__ import annotations

import torch
from torch import Tensor
import torch.nn.functional as F

__all__ = ["image_loss", "mask_loss", "feature_loss", "masked_feature_distance", "depth_loss", "reconstruction_loss",
           "scene_ranking_loss"]


def _same_shape(pred: Tensor, target: Tensor, who: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{who}: prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")


def image_loss(pred_rgb: Tensor, gt_rgb: Tensor) -> Tensor:
    """Mean squared error over all pixels and channels: (..., 3) or (..., 3, H, W) alike -> scalar."""
    _same_shape(pred_rgb, gt_rgb, "image_loss")
    return (pred_rgb - gt_rgb.to(pred_rgb)).square().mean()


def mask_loss(pred_opacity: Tensor, gt_mask: Tensor) -> Tensor:
    """Mean squared error between rendered opacity and the (0/1 or soft) mask, same shapes -> scalar."""
    _same_shape(pred_opacity, gt_mask, "mask_loss")
    return (pred_opacity - gt_mask.to(pred_opacity)).square().mean()


def feature_loss(pred_feat: Tensor, gt_feat: Tensor, dim: int = -1, eps: float = 1e-8) -> Tensor:
    """Mean cosine distance ``1 - cos(pred, gt)`` along the channel dimension ``dim`` -> scalar.

    Use ``dim=1`` for (V, C, h, w) maps, ``dim=-1`` for (R, C) rays.
    """
    _same_shape(pred_feat, gt_feat, "feature_loss")
    return (1.0 - F.cosine_similarity(pred_feat, gt_feat.to(pred_feat), dim=dim, eps=eps)).mean()


def masked_feature_distance(pred_feat: Tensor, gt_feat: Tensor, mask: Tensor, dim: int = 1,
                            eps: float = 1e-8) -> Tensor:
    """Per-view mean cosine distance ``1 - cos`` over the pixels of ``mask``, summed over views -> scalar.

    For logging: :func:`feature_loss` averages over every pixel, and background pixels, where the
    rendered features are near zero, read about 1 whatever the fields learn. Args: ``pred_feat``,
    ``gt_feat`` (V, C, h, w) with channels on ``dim``; ``mask`` (V, h, w) bool. A view without a
    masked pixel contributes 0. Detached.
    """
    _same_shape(pred_feat, gt_feat, "masked_feature_distance")
    with torch.no_grad():
        distance = 1.0 - F.cosine_similarity(pred_feat, gt_feat.to(pred_feat), dim=dim, eps=eps)
        if mask.shape != distance.shape:
            raise ValueError(f"masked_feature_distance: mask shape {tuple(mask.shape)} != "
                             f"feature map shape {tuple(distance.shape)}")
        mask = mask.to(torch.bool)
        summed = torch.where(mask, distance, torch.zeros_like(distance)).flatten(1).sum(dim=1)
        return (summed / mask.flatten(1).sum(dim=1).clamp(min=1)).sum()


def depth_loss(pred_depth: Tensor, gt_depth: Tensor, valid: Tensor) -> Tensor:
    """Mean absolute depth error over the ``valid`` pixels: pred, gt (...), valid (...) bool -> scalar.

    Invalid pixels (background, object edges, ``inf`` GT depths) contribute nothing, not even NaN
    gradients; with no valid pixel the loss is 0 (and still connected to ``pred_depth``).
    """
    _same_shape(pred_depth, gt_depth, "depth_loss")
    _same_shape(pred_depth, valid, "depth_loss")
    valid = valid.to(torch.bool)
    target = torch.where(valid, gt_depth.to(pred_depth), torch.zeros_like(pred_depth))
    error = torch.where(valid, (pred_depth - target).abs(), torch.zeros_like(pred_depth))
    return error.sum() / valid.sum().clamp(min=1)


def reconstruction_loss(pred_rgb: Tensor, gt_rgb: Tensor, pred_opacity: Tensor, gt_mask: Tensor,
                        pred_feat: Tensor | None = None, gt_feat: Tensor | None = None, *,
                        lambda_sigma: float = 1.0, lambda_f: float = 1.0,
                        feature_dim: int = -1, pred_depth: Tensor | None = None, gt_depth: Tensor | None = None,
                        depth_valid: Tensor | None = None, lambda_d: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """``L_r = sum_v [ L_im(v) + lambda_f L_feat(v) ]`` over the V target views (leading dimension).

    Args:
        pred_rgb, gt_rgb: (V, ...) colours (e.g. (V, R, 3) rays or (V, 3, H, W) images).
        pred_opacity, gt_mask: (V, ...) rendered opacity and foreground mask.
        pred_feat, gt_feat: optional (V, ...) rendered and teacher features (may use another
            resolution than the colours); channels along dimension ``feature_dim`` of these (V, ...) tensors.
        lambda_sigma: weight of the mask term inside L_im. lambda_f: weight of L_feat.
        pred_depth, gt_depth, depth_valid: optional (V, ...) rendered depth, GT depth and valid
            pixels of :func:`depth_loss`; used when ``lambda_d > 0``.
        lambda_d: weight of L_depth (0, the paper: off).
    Returns:
        ``(total, terms)``: scalar L_r and a dict of the per-term sums over views (``image``,
        ``mask``, ``feature``, ``depth``), detached, for logging.
    """
    views = pred_rgb.shape[0]
    if pred_opacity.shape[0] != views or (pred_feat is not None and pred_feat.shape[0] != views):
        raise ValueError("reconstruction_loss: all predictions need the same leading number of views V")
    if (pred_feat is None) != (gt_feat is None):
        raise ValueError("reconstruction_loss: pass both pred_feat and gt_feat, or neither")
    image_terms = [image_loss(pred_rgb[v], gt_rgb[v]) for v in range(views)]
    mask_terms = [mask_loss(pred_opacity[v], gt_mask[v]) for v in range(views)]
    image_sum, mask_sum = sum(image_terms), sum(mask_terms)
    total = image_sum + lambda_sigma * mask_sum
    terms = {"image": image_sum.detach(), "mask": mask_sum.detach()}
    if pred_feat is not None:
        feature_dim_in_view = feature_dim if feature_dim < 0 else feature_dim - 1
        feature_sum = sum(feature_loss(pred_feat[v], gt_feat[v], dim=feature_dim_in_view) for v in range(views))
        total = total + lambda_f * feature_sum
        terms["feature"] = feature_sum.detach()
    if lambda_d > 0:
        if pred_depth is None or gt_depth is None or depth_valid is None:
            raise ValueError("reconstruction_loss: lambda_d > 0 needs pred_depth, gt_depth and depth_valid")
        if pred_depth.shape[0] != views:
            raise ValueError("reconstruction_loss: all predictions need the same leading number of views V")
        depth_sum = sum(depth_loss(pred_depth[v], gt_depth[v], depth_valid[v]) for v in range(views))
        total = total + lambda_d * depth_sum
        terms["depth"] = depth_sum.detach()
    return total, terms


def scene_ranking_loss(logits: Tensor, labels: Tensor, scene_index: Tensor) -> Tensor:
    """Within-scene ranking of anomaly logits: a smooth surrogate of one minus the per-scene object AUROC.

    For each scene holding both an anomalous object (label 1) and a normal one (label 0), the mean over its
    (anomalous a, normal n) pairs of ``softplus(logit_n - logit_a)``; then the mean over such scenes, each
    scene weighing the same (as the per-scene AUROC averages them). Objects labelled -1 are left out. BCE
    scores every object against one threshold shared by all scenes; this term only asks that each scene's
    anomalies score above its own normal objects. Zero (still differentiable) when no scene has both.

    Args:
        logits: (O,) anomaly logits. labels: (O,) int, 1 anomalous, 0 normal, -1 ignored.
        scene_index: (O,) scene of each object.
    """
    if not (logits.shape == labels.shape == scene_index.shape) or logits.dim() != 1:
        raise ValueError(f"scene_ranking_loss: logits, labels and scene_index must be (O,) alike, got "
                         f"{tuple(logits.shape)}, {tuple(labels.shape)}, {tuple(scene_index.shape)}")
    anomalous, normal = labels == 1, labels == 0
    pairs = (scene_index[:, None] == scene_index[None, :]) & anomalous[:, None] & normal[None, :]  # (a, n)
    if not bool(pairs.any()):
        return logits.sum() * 0.0
    row, column = torch.nonzero(pairs, as_tuple=True)
    losses = F.softplus(logits[column] - logits[row])
    scene = scene_index[row]
    _, scene_of_pair, per_scene = torch.unique(scene, return_inverse=True, return_counts=True)
    return (losses / per_scene[scene_of_pair].to(losses.dtype)).sum() / per_scene.numel()
