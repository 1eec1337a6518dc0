"""Stage-1 losses against hand-computed values."""
import math

import pytest
import torch

from oddsparse.train import feature_loss, image_loss, mask_loss, reconstruction_loss


def test_image_and_mask_losses_hand_values():
    pred = torch.tensor([[0.0, 0.5, 1.0], [1.0, 1.0, 1.0]])
    gt = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    # squared errors 0, .25, 1, 0, 1, 0 -> mean 2.25 / 6
    assert image_loss(pred, gt).item() == pytest.approx(2.25 / 6)
    assert mask_loss(torch.tensor([0.2, 0.9, 1.0, 0.0]), torch.tensor([0.0, 1.0, 1.0, 1.0])).item() == pytest.approx(
        (0.04 + 0.01 + 0.0 + 1.0) / 4)
    with pytest.raises(ValueError, match="shape"):
        image_loss(pred, gt[:1])


def test_feature_loss_is_cosine_distance():
    pred = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0], [-3.0, 0.0]])
    gt = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    # cosines 1, 1/sqrt(2), 1, -1 -> distances 0, 1 - 1/sqrt(2), 0, 2
    expected = (0 + (1 - 1 / math.sqrt(2)) + 0 + 2) / 4
    assert feature_loss(pred, gt).item() == pytest.approx(expected, rel=1e-6)
    maps_pred = pred.T.reshape(1, 2, 2, 2)  # (V, C, h, w): same vectors as a 2 x 2 map
    maps_gt = gt.T.reshape(1, 2, 2, 2)
    assert feature_loss(maps_pred, maps_gt, dim=1).item() == pytest.approx(expected, rel=1e-6)


def test_reconstruction_loss_sums_views_with_weights():
    # two views, one pixel each
    pred_rgb = torch.tensor([[[0.5, 0.5, 0.5]], [[1.0, 0.0, 0.0]]])  # (V, R, 3)
    gt_rgb = torch.tensor([[[0.0, 0.5, 1.0]], [[1.0, 0.0, 0.0]]])
    pred_opacity = torch.tensor([[0.5], [1.0]])
    gt_mask = torch.tensor([[1.0], [0.0]])
    pred_feat = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    gt_feat = torch.tensor([[[0.0, 1.0]], [[0.0, 3.0]]])
    # view 0: L_im = (0.25 + 0 + 0.25) / 3 + 2 * 0.25 ; L_feat = 1 ; view 1: L_im = 0 + 2 * 1 ; L_feat = 0
    image0, mask0, mask1 = 0.5 / 3, 0.25, 1.0
    total, terms = reconstruction_loss(pred_rgb, gt_rgb, pred_opacity, gt_mask, pred_feat, gt_feat,
                                       lambda_sigma=2.0, lambda_f=0.5)
    assert total.item() == pytest.approx(image0 + 2 * mask0 + 0.5 * 1.0 + 2 * mask1)
    assert terms["image"].item() == pytest.approx(image0)
    assert terms["mask"].item() == pytest.approx(mask0 + mask1)
    assert terms["feature"].item() == pytest.approx(1.0)
    default_total, _ = reconstruction_loss(pred_rgb, gt_rgb, pred_opacity, gt_mask, pred_feat, gt_feat)
    assert default_total.item() == pytest.approx(image0 + mask0 + mask1 + 1.0)
    no_feat, terms = reconstruction_loss(pred_rgb, gt_rgb, pred_opacity, gt_mask)
    assert no_feat.item() == pytest.approx(image0 + mask0 + mask1) and "feature" not in terms
    # feature maps (V, C, h, w) with channels on dim 2 of the batch (dim 1 of a view)
    maps_total, _ = reconstruction_loss(pred_rgb, gt_rgb, pred_opacity, gt_mask, pred_feat.permute(0, 2, 1)[..., None],
                                        gt_feat.permute(0, 2, 1)[..., None], feature_dim=1)
    assert maps_total.item() == pytest.approx(default_total.item())
    with pytest.raises(ValueError, match="both"):
        reconstruction_loss(pred_rgb, gt_rgb, pred_opacity, gt_mask, pred_feat)
