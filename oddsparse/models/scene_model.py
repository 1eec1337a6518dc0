"""The sparse 3D scene model (stage 1): images -> carved sparse voxels -> feature fields.

Composition of the primitives, in order (shapes for B scenes of M input views of H x W):

1. :class:`~oddsparse.models.encoder.ResNetFPN` encodes every view: (B*M, d, H/4, W/4).
2. :class:`~oddsparse.models.encoder.ForegroundHead` predicts per-pixel foreground; carving
   (:func:`~oddsparse.geometry.carving.carve_occupancy`) of the M predicted foreground maps gives
   the occupied voxels (GT masks may replace the prediction during training, never at test time).
3. :func:`~oddsparse.geometry.unproject.unproject_features` fills the carved voxels only (mean over
   the views that see each voxel), and the sparse 3D U-Net refines them into F_v.
4. :class:`~oddsparse.models.fields.FieldHeads` gives density, colour and the projected features
   beta on every occupied voxel; :func:`~oddsparse.renderers.render_views` renders them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oddsparse.geometry.cameras import scale_intrinsics
from oddsparse.geometry.carving import carve_occupancy
from oddsparse.geometry.grid import VoxelGrid
from oddsparse.geometry.unproject import unproject_features
from oddsparse.models.backbone import build_backbone
from oddsparse.models.encoder import ForegroundHead, ForegroundRefiner, ResNetFPN
from oddsparse.models.fields import FieldHeads, VoxelFields
from oddsparse.renderers import render_views
from oddsparse.structures.sparse import SparseVoxels

__all__ = ["SceneModel", "SceneOutput", "images_to_float", "foreground_loss"]


def images_to_float(images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """(..., H, W, 3) uint8 or float images -> (..., 3, H, W) ``dtype`` in [0, 1]."""
    if images.shape[-1] != 3:
        raise ValueError(f"images must be (..., H, W, 3), got {tuple(images.shape)}")
    images = images.movedim(-1, -3)
    return images.to(dtype) / 255.0 if images.dtype == torch.uint8 else images.to(dtype)


@dataclass(frozen=True)
class SceneOutput:
    """What :class:`SceneModel` computes for a batch.

    Attributes:
        occupancy: carved :class:`SparseVoxels` (feats (N, 1) agreement fraction).
        volume: F_v, the refined sparse features (N, C_v) on the same sites.
        fields: :class:`VoxelFields` on the same sites (density, rgb, beta features).
        foreground_logits: (B, M, h, w) foreground logits at the encoder stride, or (B, M, H, W) at
            full resolution with ``foreground_refine`` (H and W rounded up to multiples of 4,
            :meth:`SceneModel.encode`), covering the whole image either way.
        views: the input views ``(images (B, M, H, W, 3), K (B, M, 3, 3), world_to_cam (B, M, 4, 4))`` the output
            was computed from (for what reads the views again, e.g. the detector's ``view_colour``), or None.
    """

    occupancy: SparseVoxels
    volume: SparseVoxels
    fields: VoxelFields
    foreground_logits: Tensor
    views: tuple[Tensor, Tensor, Tensor] | None = None


class SceneModel(nn.Module):
    """Images of calibrated views -> sparse feature fields of the scene.

    Args:
        grid: the voxel grid (default 96 x 96 x 16 voxels of 4 cm).
        encoder_depth: ResNet depth of the 2D encoder (18 small, 50 paper).
        feature_channels: d, channels of the 2D features lifted into voxels.
        backbone: ``"sparse"`` (spconv U-Net on occupied voxels) or ``"dense"`` (its Conv3d twin).
        backbone_channels: widths of the 4 scales of the 3D U-Net.
        feature_dim: d_f of the distilled feature field beta.
        carve_threshold: foreground probability above which a pixel is foreground.
        carve_tolerance: views allowed to disagree when carving (0: a strict visual hull; with 1 and few
            views every voxel that a single view sees as background survives, i.e. most of the grid).
        carve_min_views: views that must see a voxel for it to survive (capped at M, so a single input
            view still carves); 2 removes the long single-view cones outside the other frustums.
        carve_dilation: voxels added around the carved set.
        carve_subdivisions: s, each voxel is tested at s**3 points when carving (1 suffices for small voxels).
        pretrained_backbone_path: optional local ImageNet ResNet weights for the encoder.
        encoder_norm: the encoder ResNet's normalisation, ``"batch"``, ``"frozen"`` or ``"group"``
            (:class:`~oddsparse.models.encoder.ResNetFPN`'s ``norm``).
        density_scale: density per metre of a unit output of the density head (:class:`FieldHeads`).
        foreground_refine: predict the foreground at full image resolution (:class:`ForegroundRefiner`)
            instead of at the encoder's stride 4; carving then uses the sharp silhouettes.
    """

    def __init__(self, *, grid: VoxelGrid | None = None, encoder_depth: int = 18, feature_channels: int = 32,
                 backbone: Literal["sparse", "dense"] = "sparse", backbone_channels: Sequence[int] = (32, 64, 128, 256),
                 feature_dim: int = 128, carve_threshold: float = 0.5, carve_tolerance: float = 0,
                 carve_min_views: int = 2, carve_dilation: int = 1, carve_subdivisions: int = 2,
                 pretrained_backbone_path=None, density_scale: float = 1.0, foreground_refine: bool = False,
                 encoder_norm: Literal["batch", "frozen", "group"] = "batch"):
        super().__init__()
        self.grid = grid or VoxelGrid()
        self.carve_threshold, self.carve_tolerance, self.carve_dilation = carve_threshold, carve_tolerance, carve_dilation
        self.carve_min_views = carve_min_views
        self.carve_subdivisions = carve_subdivisions
        self.encoder = ResNetFPN(depth=encoder_depth, out_channels=feature_channels,
                                 pretrained_backbone_path=pretrained_backbone_path, norm=encoder_norm)
        self.foreground = ForegroundHead(feature_channels)
        self.foreground_refiner = ForegroundRefiner(feature_channels) if foreground_refine else None
        self.backbone = build_backbone(backbone, feature_channels, channels=tuple(backbone_channels))
        self.volume_channels = backbone_channels[0]
        self.fields = FieldHeads(self.volume_channels, feature_dim=feature_dim, density_scale=density_scale)

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (B, M, H, W, 3) -> features (B, M, d, h, w) and foreground logits (B, M, h, w) ((B, M, H', W')
        refined), each covering the whole H x W image (the convention carving and unprojection read them with).

        The encoder's stride-4 cell i covers pixels [4i, 4i + 4) of its input, so an image whose H or W is not a
        multiple of 4 is first resized to the next multiples (H', W'): h = H' / 4 cells then span exactly the H
        rows (a cell of H / h rows each), where the image as given would leave the last cell partly outside it
        and every cell up to 3 pixels off where carving reads it."""
        batch, views = images.shape[:2]
        dtype = self.encoder.mean.dtype  # the model's floating type (float32 unless converted)
        flat = images_to_float(images, dtype).flatten(0, 1)  # (B*M, 3, H, W)
        height, width = flat.shape[-2:]
        stride_size = (-(-height // 4) * 4, -(-width // 4) * 4)
        if stride_size != (height, width):
            flat = F.interpolate(flat, size=stride_size, mode="bilinear", align_corners=False)  # (B*M, 3, H', W')
        features = self.encoder(flat)  # (B*M, d, h, w)
        logits = self.foreground(features)  # (B*M, 1, h, w)
        if self.foreground_refiner is not None:
            logits = self.foreground_refiner(flat, features, logits)  # (B*M, 1, H, W)
        logits = logits[:, 0]
        return features.unflatten(0, (batch, views)), logits.unflatten(0, (batch, views))

    def carve(self, foreground: Tensor, K: Tensor, world_to_cam: Tensor, image_size: tuple[int, int]) -> SparseVoxels:
        """Carve foreground maps (B, M, h, w) (probabilities or masks of any resolution) into occupancy."""
        h, w = foreground.shape[-2:]
        K_small = scale_intrinsics(K, w / image_size[1], h / image_size[0])
        return carve_occupancy(foreground, K_small, world_to_cam, self.grid, threshold=self.carve_threshold,
                               tolerance=self.carve_tolerance, dilation=self.carve_dilation,
                               min_views=max(1, min(self.carve_min_views, foreground.shape[-3])),
                               subdivisions=self.carve_subdivisions)

    def forward(self, images: Tensor, K: Tensor, world_to_cam: Tensor, carve_masks: Tensor | None = None) -> SceneOutput:
        """Args:
            images: (B, M, H, W, 3) uint8 or float input views.
            K: (B, M, 3, 3) intrinsics of the H x W images. world_to_cam: (B, M, 4, 4).
            carve_masks: optional (B, M, H', W') foreground masks used for carving instead of the
                predicted foreground (training only; never pass ground truth at test time).
        """
        if images.dim() != 5:
            raise ValueError(f"SceneModel expects images (B, M, H, W, 3), got {tuple(images.shape)}")
        image_size = tuple(images.shape[2:4])
        features, logits = self.encode(images)
        foreground = carve_masks if carve_masks is not None else torch.sigmoid(logits.detach())
        occupancy = self.carve(foreground, K, world_to_cam, image_size)
        lifted, _ = unproject_features(features, K, world_to_cam, image_size, self.grid, occupancy)
        volume = self.backbone(lifted)  # F_v: (N, C_v)
        fields = self.fields(volume)
        return SceneOutput(occupancy=occupancy, volume=volume, fields=fields, foreground_logits=logits,
                           views=(images, K, world_to_cam))

    def render(self, fields: VoxelFields, K: Tensor, world_to_cam: Tensor, image_size: tuple[int, int],
               render_size: tuple[int, int], **kwargs) -> dict[str, Tensor]:
        """Render target views of every scene: K (B, T, 3, 3), world_to_cam (B, T, 4, 4) -> dict of (B*T, ...)."""
        batch, views = K.shape[:2]
        view_batch_index = torch.arange(batch, device=K.device).repeat_interleave(views)
        return render_views(fields.voxels, K.flatten(0, 1), world_to_cam.flatten(0, 1), image_size,
                            render_size=render_size, view_batch_index=view_batch_index, **kwargs)


def foreground_loss(logits: Tensor, masks: Tensor) -> Tensor:
    """BCE of foreground logits (B, M, h, w) against full-resolution masks (B, M, H, W) (area-downsampled)."""
    target = F.adaptive_avg_pool2d(masks.float().flatten(0, 1)[:, None], logits.shape[-2:])[:, 0]
    return F.binary_cross_entropy_with_logits(logits.flatten(0, 1), target)
