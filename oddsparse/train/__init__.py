"""oddsparse.train: losses and loops that recipes call."""
from oddsparse.train.losses import depth_loss, feature_loss, image_loss, mask_loss, reconstruction_loss

__all__ = ["image_loss", "mask_loss", "feature_loss", "depth_loss", "reconstruction_loss"]
