"""Stage-1 reconstruction losses (paper: L_r = sum over target views of L_im + lambda_f L_feat).

``L_im = ||I - I_hat||^2 + lambda_sigma ||M - M_hat||^2`` with squared errors averaged over pixels
(and colour channels), ``L_feat`` the mean cosine distance ``1 - cos`` between rendered and teacher
features. All weights are 1 by default.
"""
from __future__ import annotations

from torch import Tensor
import torch.nn.functional as F

__all__ = ["image_loss", "mask_loss", "feature_loss", "reconstruction_loss"]


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


def reconstruction_loss(pred_rgb: Tensor, gt_rgb: Tensor, pred_opacity: Tensor, gt_mask: Tensor,
                        pred_feat: Tensor | None = None, gt_feat: Tensor | None = None, *,
                        lambda_sigma: float = 1.0, lambda_f: float = 1.0,
                        feature_dim: int = -1) -> tuple[Tensor, dict[str, Tensor]]:
    """``L_r = sum_v [ L_im(v) + lambda_f L_feat(v) ]`` over the V target views (leading dimension).

    Args:
        pred_rgb, gt_rgb: (V, ...) colours (e.g. (V, R, 3) rays or (V, 3, H, W) images).
        pred_opacity, gt_mask: (V, ...) rendered opacity and foreground mask.
        pred_feat, gt_feat: optional (V, ...) rendered and teacher features (may use another
            resolution than the colours); channels along dimension ``feature_dim`` of these (V, ...) tensors.
        lambda_sigma: weight of the mask term inside L_im. lambda_f: weight of L_feat.
    Returns:
        ``(total, terms)``: scalar L_r and a dict of the per-term sums over views (``image``,
        ``mask``, ``feature``), detached, for logging.
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
    return total, terms
