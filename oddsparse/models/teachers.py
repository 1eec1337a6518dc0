"""2D teachers for feature distillation: images -> dense features, PCA to d_f, on-disk cache.

* :class:`DinoV2Teacher`: DINOv2 ViT-S/14 through timm, weights from a local file (nothing is
  downloaded); patch tokens as a (B, 384, h, w) map.
* :class:`DenseSiftTeacher`: weight-free dense SIFT descriptors (kornia), the offline default.
* :func:`fit_pca` / :class:`PCA`: reduce teacher channels to 128, fitted on training scenes;
  saved as ``.npz`` of plain arrays (loaded with ``allow_pickle=False``).
* :class:`TeacherCache`: per-scene features computed once and stored atomically on disk.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oddsparse.utils.checkpoint import atomic_write

__all__ = ["Teacher", "DinoV2Teacher", "DenseSiftTeacher", "PCA", "fit_pca", "fit_teacher_pca", "TeacherCache"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_images(images: Tensor, who: str) -> None:
    if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"{who}: images must be a float (B, 3, H, W) tensor in [0, 1], got "
                         f"{tuple(images.shape)} {images.dtype}")


class Teacher(nn.Module):
    """A frozen 2D feature extractor: images (B, 3, H, W) float in [0, 1] -> features (B, C, h, w).

    Subclasses set ``out_channels`` (C) and ``teacher_id`` (a short string naming the teacher and
    its settings, used as a cache key) and implement :meth:`extract`. ``forward`` runs without
    gradients in eval mode.
    """

    out_channels: int
    teacher_id: str

    def extract(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        _check_images(images, type(self).__name__)
        was_training = self.training
        self.eval()
        try:
            return self.extract(images)
        finally:
            self.train(was_training)


class DinoV2Teacher(Teacher):
    """DINOv2 ViT-S/14 patch features from a local checkpoint.

    Args:
        checkpoint_path: local weights file: timm's ``.safetensors`` / ``.bin`` or the original
            DINOv2 ``.pth`` (timm converts it); loaded through
            ``timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=...))``.
        model_name: timm model name.
        image_size: images are resized (bilinear, antialiased) to this square size, a multiple of
            the 14-pixel patch; the output map is ``image_size / 14`` on a side.

    Example:
        >>> teacher = DinoV2Teacher("dinov2_vits14.safetensors")  # doctest: +SKIP
        >>> teacher(torch.rand(2, 3, 256, 256)).shape  # doctest: +SKIP
        torch.Size([2, 384, 16, 16])
    """

    def __init__(self, checkpoint_path: str | os.PathLike, model_name: str = "vit_small_patch14_dinov2.lvd142m",
                 image_size: int = 224):
        super().__init__()
        import timm

        checkpoint_path = Path(checkpoint_path)
        if not checkpoint_path.is_file():
            raise FileNotFoundError(f"DinoV2Teacher: checkpoint_path {checkpoint_path} does not exist")
        self.model = timm.create_model(model_name, pretrained=True, num_classes=0, img_size=image_size,
                                       pretrained_cfg_overlay=dict(file=str(checkpoint_path)))
        patch = self.model.patch_embed.patch_size[0]
        if image_size % patch:
            raise ValueError(f"DinoV2Teacher: image_size must be a multiple of the patch size {patch}, got {image_size}")
        self.image_size = image_size
        self.patch_size = patch
        self.out_channels = self.model.embed_dim
        self.teacher_id = f"{model_name}-{image_size}"
        self.model.requires_grad_(False)
        cfg = self.model.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg.get("mean", _IMAGENET_MEAN)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", _IMAGENET_STD)).view(1, 3, 1, 1), persistent=False)

    def extract(self, images: Tensor) -> Tensor:
        resized = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                align_corners=False, antialias=True)
        tokens = self.model.forward_features((resized - self.mean) / self.std)  # (B, prefix + h*w, C)
        side = self.image_size // self.patch_size
        patches = tokens[:, self.model.num_prefix_tokens:]  # (B, h*w, C)
        return patches.transpose(1, 2).reshape(images.shape[0], self.out_channels, side, side)


class DenseSiftTeacher(Teacher):
    """Weight-free dense SIFT descriptors (``kornia.feature.DenseSIFTDescriptor``), 128 channels.

    Args:
        stride: output stride in pixels (the map is ``H / stride`` x ``W / stride``).
        spatial_bin_size: pixels per spatial bin of the 4 x 4 SIFT layout.

    Example:
        >>> DenseSiftTeacher(stride=8)(torch.rand(1, 3, 64, 64)).shape
        torch.Size([1, 128, 8, 8])
    """

    def __init__(self, stride: int = 8, spatial_bin_size: int = 4):
        super().__init__()
        from kornia.feature import DenseSIFTDescriptor

        patch = 4 * spatial_bin_size
        # kornia pools the gradient histograms over each bin with a convolution padded by spatial_bin_size // 2,
        # which moves descriptor k by that many pixels: padding the image by (patch - stride) / 2 less that
        # centres descriptor k on the k-th stride cell (pixel k * stride + (stride - 1) / 2), and an H x W image
        # gives an (H / stride) x (W / stride) map
        padding = (patch - stride) // 2 - spatial_bin_size // 2
        if padding < 0 or (patch - stride) % 2:
            raise ValueError(f"DenseSiftTeacher: stride must be <= {patch - 2 * (spatial_bin_size // 2)} (4 * "
                             f"spatial_bin_size less a bin) with the parity of {patch}, got stride={stride}")
        self.stride = stride
        self.sift = DenseSIFTDescriptor(num_ang_bins=8, num_spatial_bins=4, spatial_bin_size=spatial_bin_size,
                                        rootsift=True, stride=stride, padding=padding)
        self.out_channels = 128
        # "c": centred (versions before it sat spatial_bin_size // 2 pixels up and left): its own caches
        self.teacher_id = f"dense-sift-c-s{stride}-b{spatial_bin_size}"

    def extract(self, images: Tensor) -> Tensor:
        height, width = images.shape[-2:]
        if height % self.stride or width % self.stride:
            raise ValueError(f"DenseSiftTeacher: image size {height}x{width} must be a multiple of stride {self.stride}")
        gray = (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2])[:, None]  # (B, 1, H, W)
        out = self.sift(gray)  # (B, 128, H / stride, W / stride), unit-norm RootSIFT
        if out.shape[-2:] != (height // self.stride, width // self.stride):
            raise RuntimeError(f"DenseSiftTeacher: kornia returned a {tuple(out.shape[-2:])} map for a {height}x{width} "
                               f"image at stride {self.stride}, expected {(height // self.stride, width // self.stride)}")
        return out


# ---------------------------------------------------------------------------------------------- PCA
@dataclass(frozen=True)
class PCA:
    """A linear projection to the principal components: ``(x - mean) @ components.T``.

    Attributes:
        mean: (C,). components: (D, C) orthonormal rows, by decreasing variance.
        explained_variance: (D,) variance along each component.
    """

    mean: Tensor
    components: Tensor
    explained_variance: Tensor

    @property
    def in_channels(self) -> int:
        return self.components.shape[1]

    @property
    def out_channels(self) -> int:
        return self.components.shape[0]

    def transform(self, features: Tensor) -> Tensor:
        """(..., C) -> (..., D)."""
        if features.shape[-1] != self.in_channels:
            raise ValueError(f"PCA.transform: expected {self.in_channels} channels, got {features.shape[-1]}")
        mean = self.mean.to(features)
        return (features - mean) @ self.components.to(features).T

    def transform_maps(self, maps: Tensor) -> Tensor:
        """Feature maps (B, C, h, w) -> (B, D, h, w)."""
        return self.transform(maps.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()

    def fingerprint(self) -> str:
        """Short hash of the projection (part of cache keys)."""
        digest = hashlib.sha1()
        for array in (self.mean, self.components):
            digest.update(array.detach().cpu().to(torch.float64).numpy().tobytes())
        return digest.hexdigest()[:12]

    def save(self, path: str | os.PathLike) -> None:
        """Write an ``.npz`` of plain arrays (atomically)."""
        arrays = {"mean": self.mean.cpu().numpy(), "components": self.components.cpu().numpy(),
                  "explained_variance": self.explained_variance.cpu().numpy()}
        atomic_write(path, lambda handle: np.savez(handle, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PCA":
        path = Path(path)
        with np.load(path, allow_pickle=False) as data:
            missing = {"mean", "components", "explained_variance"} - set(data.files)
            if missing:
                raise ValueError(f"{path}: PCA file lacks field(s) {sorted(missing)}")
            mean, components, variance = (torch.from_numpy(data[k]) for k in ("mean", "components", "explained_variance"))
        if components.dim() != 2 or mean.shape != (components.shape[1],) or variance.shape != (components.shape[0],):
            raise ValueError(f"{path}: PCA fields have inconsistent shapes: mean {tuple(mean.shape)}, components "
                             f"{tuple(components.shape)}, explained_variance {tuple(variance.shape)}")
        return cls(mean=mean, components=components, explained_variance=variance)


def fit_pca(features: Tensor, out_dim: int = 128) -> PCA:
    """Principal components of ``features`` (N, C) (covariance eigendecomposition in float64).

    Each component's sign is fixed so that its largest-magnitude loading is positive.

    Returns:
        :class:`PCA` with D = ``out_dim`` components (float32).
    """
    if features.dim() != 2:
        raise ValueError(f"fit_pca: features must be (N, C), got {tuple(features.shape)}")
    num, channels = features.shape
    if not 1 <= out_dim <= channels:
        raise ValueError(f"fit_pca: out_dim must be in [1, C={channels}], got {out_dim}")
    if num < 2:
        raise ValueError(f"fit_pca: need at least 2 samples, got {num}")
    data = features.detach().to(torch.float64)
    mean = data.mean(dim=0)
    centred = data - mean
    covariance = centred.T @ centred / (num - 1)  # (C, C)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    order = torch.argsort(eigenvalues, descending=True)[:out_dim]
    components = eigenvectors[:, order].T  # (D, C)
    largest = components.abs().argmax(dim=1)
    signs = torch.sign(components[torch.arange(out_dim), largest])
    components = components * signs[:, None]
    return PCA(mean=mean.float(), components=components.float(), explained_variance=eigenvalues[order].clamp(min=0).float())


def fit_teacher_pca(teacher: Teacher, image_batches, out_dim: int = 128, max_samples: int = 200_000,
                    generator: torch.Generator | None = None) -> PCA:
    """Fit a :class:`PCA` on teacher features of training images.

    Args:
        teacher: the teacher.
        image_batches: iterable of (B, 3, H, W) image tensors (training scenes only).
        max_samples: feature vectors kept (a uniform random subset per batch, in proportion).
    """
    collected = []
    for images in image_batches:
        maps = teacher(images)  # (B, C, h, w)
        collected.append(maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1]))
    if not collected:
        raise ValueError("fit_teacher_pca: image_batches is empty")
    features = torch.cat(collected)
    if features.shape[0] > max_samples:
        keep = torch.randperm(features.shape[0], generator=generator)[:max_samples]
        features = features[keep]
    return fit_pca(features, out_dim=out_dim)


# ---------------------------------------------------------------------------------------------- cache
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._+\-]+$")


class TeacherCache:
    """Teacher features of every view of a scene, computed once and cached on disk.

    Files live at ``cache_dir / <teacher_id>[_pca-<fingerprint>] / <H>x<W> / <scene_name>.npy``
    (a (V, C, h, w) float array, PCA-reduced when ``pca`` is given), written atomically and read
    with ``numpy.load(allow_pickle=False)``.

    Args:
        cache_dir: root folder.
        teacher: the :class:`Teacher`.
        pca: optional :class:`PCA` applied to the teacher's channels.
        batch_size: views per teacher call.
        dtype: numpy dtype of the stored arrays (``"float16"`` halves the disk use).
    """

    def __init__(self, cache_dir: str | os.PathLike, teacher: Teacher, pca: PCA | None = None, *,
                 batch_size: int = 8, dtype: str = "float32"):
        self.cache_dir = Path(cache_dir)
        self.teacher = teacher
        self.pca = pca
        self.batch_size = batch_size
        self.dtype = np.dtype(dtype)
        if pca is not None and pca.in_channels != teacher.out_channels:
            raise ValueError(f"TeacherCache: pca expects {pca.in_channels} channels, teacher gives {teacher.out_channels}")
        self.key = teacher.teacher_id + ("" if pca is None else f"_pca-{pca.fingerprint()}")

    def path(self, scene_name: str, image_size: tuple[int, int]) -> Path:
        if not _SAFE_NAME.match(scene_name):
            raise ValueError(f"TeacherCache: scene_name {scene_name!r} must match {_SAFE_NAME.pattern}")
        return self.cache_dir / self.key / f"{image_size[0]}x{image_size[1]}" / f"{scene_name}.npy"

    def compute(self, images: Tensor) -> Tensor:
        """Teacher (and PCA) features of images (V, 3, H, W) -> (V, C, h, w), in batches, on the teacher's device."""
        device = next(self.teacher.parameters(), next(self.teacher.buffers(), images)).device
        maps = []
        for start in range(0, images.shape[0], self.batch_size):
            batch = self.teacher(images[start:start + self.batch_size].to(device))
            maps.append(batch if self.pca is None else self.pca.transform_maps(batch))
        return torch.cat(maps)

    def get(self, scene_name: str, images: Tensor) -> Tensor:
        """Features of all V views of ``scene_name``: (V, C, h, w) float32, from disk when cached.

        Args:
            images: (V, 3, H, W) float in [0, 1], every view of the scene in a fixed order.
        """
        _check_images(images, "TeacherCache.get")
        path = self.path(scene_name, tuple(images.shape[-2:]))
        if path.is_file():
            array = np.load(path, allow_pickle=False)
            if array.ndim != 4 or array.shape[0] != images.shape[0]:
                raise ValueError(f"{path}: cached features have shape {array.shape}, expected ({images.shape[0]}, C, h, w)"
                                 f" for the {images.shape[0]} views given; delete the file to recompute")
            return torch.from_numpy(array.astype(np.float32))
        features = self.compute(images).float().cpu()
        array = features.numpy().astype(self.dtype)
        atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False))
        return torch.from_numpy(array.astype(np.float32))

    def __contains__(self, item: tuple[str, tuple[int, int]]) -> bool:
        scene_name, image_size = item
        return self.path(scene_name, image_size).is_file()
