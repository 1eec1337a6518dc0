"""oddsparse.train: losses and loops that recipes call."""
from oddsparse.train.losses import (depth_loss, feature_loss, image_loss, mask_loss, masked_feature_distance,
                                   reconstruction_loss, scene_ranking_loss)

__all__ = ["image_loss", "mask_loss", "feature_loss", "masked_feature_distance", "depth_loss", "reconstruction_loss",
           "scene_ranking_loss"]
