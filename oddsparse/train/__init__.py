"""oddsparse.train: losses and loops that recipes call."""
from oddsparse.train.losses import feature_loss, image_loss, mask_loss, reconstruction_loss

__all__ = ["image_loss", "mask_loss", "feature_loss", "reconstruction_loss"]
