"""Stage-1 losses against hand-computed values."""
import math

import pytest
import torch

from oddsparse.train import (depth_loss, feature_loss, image_loss, mask_loss, masked_feature_distance,
                             reconstruction_loss, scene_ranking_loss)


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


def test_masked_feature_distance_averages_each_view_over_its_mask():
    # view 0: pixel distances 0, 1 - 1/sqrt(2), 0, 2 with pixels 0 and 3 masked -> (0 + 2) / 2 = 1;
    # view 1: the same maps, no pixel masked -> 0. Sum over views: 1.
    pred = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0], [-3.0, 0.0]]).T.reshape(1, 2, 2, 2).repeat(2, 1, 1, 1)
    gt = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]).T.reshape(1, 2, 2, 2).repeat(2, 1, 1, 1)
    mask = torch.tensor([[[True, False], [False, True]], [[False, False], [False, False]]])
    assert masked_feature_distance(pred, gt, mask).item() == pytest.approx(1.0, rel=1e-6)
    every = torch.ones_like(mask)  # all pixels: the per-view means of feature_loss, summed
    assert masked_feature_distance(pred, gt, every).item() == pytest.approx(2 * feature_loss(pred[:1], gt[:1], dim=1).item())
    with pytest.raises(ValueError, match="mask shape"):
        masked_feature_distance(pred, gt, mask[:, :1])


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


def test_depth_loss_hand_values_and_no_nan_from_invalid_pixels():
    pred = torch.tensor([1.0, 2.0, 3.0, 0.5], requires_grad=True)
    gt = torch.tensor([1.5, math.inf, 2.0, math.nan])
    valid = torch.tensor([True, False, True, False])
    loss = depth_loss(pred, gt, valid)
    assert loss.item() == pytest.approx((0.5 + 1.0) / 2)
    loss.backward()
    # d/dpred of mean |pred - gt| over the 2 valid pixels: sign / 2, zero elsewhere
    assert pred.grad.tolist() == pytest.approx([-0.5, 0.0, 0.5, 0.0])
    empty = depth_loss(pred, gt, torch.zeros(4, dtype=torch.bool))
    assert empty.item() == 0.0 and empty.requires_grad
    with pytest.raises(ValueError, match="shape"):
        depth_loss(pred, gt[:3], valid)


def test_reconstruction_loss_adds_weighted_depth_term():
    pred_rgb, gt_rgb = torch.zeros(2, 1, 3), torch.zeros(2, 1, 3)
    pred_opacity, gt_mask = torch.ones(2, 1), torch.ones(2, 1)
    pred_depth = torch.tensor([[1.0, 2.0], [4.0, 4.0]])
    gt_depth = torch.tensor([[1.5, 2.0], [1.0, math.inf]])
    valid = torch.tensor([[True, True], [True, False]])
    # view 0: (0.5 + 0) / 2 = 0.25 ; view 1: 3 / 1 = 3
    total, terms = reconstruction_loss(pred_rgb, gt_rgb, pred_opacity, gt_mask, pred_depth=pred_depth,
                                       gt_depth=gt_depth, depth_valid=valid, lambda_d=2.0)
    assert terms["depth"].item() == pytest.approx(3.25)
    assert total.item() == pytest.approx(2.0 * 3.25)
    off, terms = reconstruction_loss(pred_rgb, gt_rgb, pred_opacity, gt_mask, pred_depth=pred_depth,
                                     gt_depth=gt_depth, depth_valid=valid)
    assert off.item() == 0.0 and "depth" not in terms  # lambda_d = 0 (the paper): no depth term
    with pytest.raises(ValueError, match="lambda_d"):
        reconstruction_loss(pred_rgb, gt_rgb, pred_opacity, gt_mask, lambda_d=1.0)


def test_scene_ranking_loss_hand_values_and_gradient():
    """Scene 0: anomaly 2.0 against normals 0.0 and 1.0; scene 1: anomaly 3.0 against -1.0 (the -1 label and the
    scene without both kinds are left out); each scene weighs the same."""
    def softplus(x):
        return math.log1p(math.exp(x))

    logits = torch.tensor([2.0, 0.0, 1.0, 3.0, -1.0, 5.0, 0.5], requires_grad=True)
    labels = torch.tensor([1, 0, 0, 1, 0, -1, 0])
    scene = torch.tensor([0, 0, 0, 1, 1, 1, 2])
    loss = scene_ranking_loss(logits, labels, scene)
    expected = ((softplus(-2.0) + softplus(-1.0)) / 2 + softplus(-4.0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    grad = logits.grad
    assert grad[0] < 0 and grad[3] < 0 and grad[1] > 0 and grad[4] > 0  # anomalies pushed up, normals down
    assert grad[5] == 0 and grad[6] == 0  # ignored object, scene without an anomaly
    # only the order within a scene counts: a shift of one scene's logits changes nothing
    shifted = logits.detach().clone()
    shifted[3:5] += 7.0
    assert scene_ranking_loss(shifted, labels, scene).item() == pytest.approx(loss.item(), rel=1e-6)
    none = scene_ranking_loss(logits, torch.tensor([0, 0, 0, 0, 0, -1, 0]), scene)
    assert none.item() == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="alike"):
        scene_ranking_loss(logits, labels[:3], scene)
