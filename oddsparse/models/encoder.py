"""2D image encoder: a torchvision ResNet with a feature pyramid, merged to stride 4, and a foreground head.

Shapes: B*M images (scenes x input views), H/W image rows/columns, C feature channels,
h = ceil(H / 4), w = ceil(W / 4).

Weights are never downloaded: torchvision constructors get ``weights=None`` and ImageNet
weights come from a local file (a torchvision ResNet ``state_dict`` saved with ``torch.save`` or
as ``.safetensors``), loaded with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Literal, Mapping

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = ["ResNetFPN", "ForegroundHead", "ForegroundRefiner", "upsample_logits", "load_state_dict_file", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_RESNETS = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34, 50: torchvision.models.resnet50}
_STAGES = ("layer1", "layer2", "layer3", "layer4")  # strides 4, 8, 16, 32


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels), channels)


NORM_LAYERS = {"batch": nn.BatchNorm2d, "frozen": FrozenBatchNorm2d, "group": _group_norm}  # ResNetFPN(norm=...)


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a ``state_dict`` from ``path``: ``.safetensors``, or a ``torch.save`` file read with ``weights_only=True``.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the file does not hold a mapping from names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state_dict (a mapping of parameter names to tensors), "
                         f"got {type(state).__name__}")
    return dict(state)


def _load_strict(module: nn.Module, path: str | Path, optional_prefixes: tuple[str, ...] = ()) -> None:
    """Load ``path`` into ``module``, requiring every key to match (``num_batches_tracked`` and
    keys starting with ``optional_prefixes`` may be absent from the file or unused by the module)."""
    state = load_state_dict_file(path)
    expected = module.state_dict()

    def optional(key: str) -> bool:
        return key.endswith("num_batches_tracked") or key.startswith(optional_prefixes)

    missing = sorted(k for k in expected if k not in state and not optional(k))
    unexpected = sorted(k for k in state if k not in expected and not optional(k))
    mismatched = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                        for k in expected if k in state and state[k].shape != expected[k].shape)
    if missing or unexpected or mismatched:
        def show(keys):
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
        problems = [f"missing keys: {show(missing)}" if missing else "",
                    f"unexpected keys: {show(unexpected)}" if unexpected else "",
                    f"shape mismatches: {show(mismatched)}" if mismatched else ""]
        raise ValueError(f"{path}: does not match {type(module).__name__}; " + "; ".join(p for p in problems if p))
    usable = {k: v for k, v in state.items() if k in expected}
    module.load_state_dict(usable, strict=False)


class ResNetFPN(nn.Module):
    """ResNet + feature pyramid, merged into one stride-4 feature map.

    The pyramid levels P2..P5 (strides 4..32, ``out_channels`` each) are upsampled bilinearly to
    the P2 resolution and summed. Images are ImageNet-normalised inside.

    Args:
        depth: ResNet depth, 18 (small configuration), 34 or 50 (the paper's).
        out_channels: d, channels of the output map.
        weights_path: optional file with a ``state_dict`` of this whole module (e.g. trained).
        pretrained_backbone_path: optional file with a torchvision ResNet ``state_dict`` (ImageNet
            weights); the classifier ``fc.*`` may be present or absent. Ignored when ``weights_path``
            is given (that file already holds the backbone).
        frozen_batchnorm: use ``FrozenBatchNorm2d`` in the ResNet (statistics and affine fixed),
            the usual choice with small batches and pretrained weights (the same as ``norm="frozen"``).
        norm: the ResNet's normalisation: ``"batch"`` (``BatchNorm2d``, torchvision's), ``"frozen"``
            (``FrozenBatchNorm2d``) or ``"group"`` (``GroupNorm`` of 32 groups, per image). Batch
            statistics pool the images of a batch, a few scenes whose floor and light differ, and
            evaluation reads running averages of them instead; group norm computes the same
            statistics per image in training and at test time, so a scene's features do not depend
            on the other scenes of its batch or on the mode. ``"group"`` has no running statistics
            and cannot load ImageNet BatchNorm weights (``pretrained_backbone_path``).

    Example:
        >>> encoder = ResNetFPN(depth=18, out_channels=32)
        >>> encoder(torch.rand(2, 3, 64, 96)).shape
        torch.Size([2, 32, 16, 24])
    """

    def __init__(self, depth: int = 18, out_channels: int = 32, weights_path: str | Path | None = None,
                 pretrained_backbone_path: str | Path | None = None, frozen_batchnorm: bool = False,
                 norm: Literal["batch", "frozen", "group"] = "batch"):
        super().__init__()
        if depth not in _RESNETS:
            raise ValueError(f"ResNetFPN.depth must be one of {sorted(_RESNETS)}, got {depth}")
        if frozen_batchnorm and norm not in ("batch", "frozen"):
            raise ValueError(f"ResNetFPN: frozen_batchnorm=True asks for norm='frozen' but norm={norm!r} was given; "
                             f"pass one of them")
        norm = "frozen" if frozen_batchnorm else norm
        if norm not in NORM_LAYERS:
            raise ValueError(f"ResNetFPN.norm must be one of {sorted(NORM_LAYERS)}, got {norm!r}")
        if norm == "group" and pretrained_backbone_path is not None:
            raise ValueError(f"ResNetFPN: norm='group' cannot load the BatchNorm statistics of "
                             f"{pretrained_backbone_path}; use norm='batch' or 'frozen' with pretrained weights")
        self.norm = norm
        norm_layer = NORM_LAYERS[norm]
        resnet = _RESNETS[depth](weights=None, norm_layer=norm_layer)
        if pretrained_backbone_path is not None and weights_path is None:
            _load_strict(resnet, pretrained_backbone_path, optional_prefixes=("fc.",))
        self.depth = depth
        self.out_channels = out_channels
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.stages = nn.ModuleList(getattr(resnet, name) for name in _STAGES)
        stage_channels = [stage[-1].conv3.out_channels if hasattr(stage[-1], "conv3") else stage[-1].conv2.out_channels
                          for stage in self.stages]
        self.fpn = FeaturePyramidNetwork(stage_channels, out_channels)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if weights_path is not None:
            _load_strict(self, weights_path)

    def forward(self, images: Tensor) -> Tensor:
        """images (B*M, 3, H, W) in [0, 1] -> features (B*M, C, ceil(H/4), ceil(W/4))."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"ResNetFPN expects images of shape (B*M, 3, H, W), got {tuple(images.shape)}")
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        x = self.stem(x)
        levels = OrderedDict()
        for index, stage in enumerate(self.stages):
            x = stage(x)
            levels[f"c{index + 2}"] = x  # c2 .. c5, strides 4 .. 32
        pyramid = list(self.fpn(levels).values())  # P2 .. P5
        size = pyramid[0].shape[-2:]
        merged = pyramid[0]
        for level in pyramid[1:]:
            merged = merged + F.interpolate(level, size=size, mode="bilinear", align_corners=False)
        return merged  # (B*M, C, h, w)


class ForegroundHead(nn.Module):
    """Light 2D head: stride-4 features -> foreground logits.

    Two 3x3 conv + ReLU layers and a 1x1 conv to one channel. The output bias starts at
    ``logit(prior)`` so that the initial foreground probability is ``prior`` everywhere.

    Example:
        >>> head = ForegroundHead(32)
        >>> head(torch.rand(2, 32, 16, 24)).shape
        torch.Size([2, 1, 16, 24])
    """

    def __init__(self, in_channels: int, hidden: int = 32, prior: float = 0.1):
        super().__init__()
        if not 0.0 < prior < 1.0:
            raise ValueError(f"ForegroundHead.prior must be in (0, 1), got {prior}")
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, 1),
        )
        nn.init.constant_(self.layers[-1].bias, float(torch.logit(torch.tensor(prior))))

    def forward(self, features: Tensor) -> Tensor:
        """features (B*M, C, h, w) -> logits (B*M, 1, h, w)."""
        return self.layers(features)


def upsample_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize logits (B*M, 1, h, w) to full resolution ``size = (H, W)``.

    With ``align_corners=False`` a stride-4 map covers the image exactly when H = 4h, W = 4w,
    consistent with the pixel-centre convention (index + 0.5).
    """
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


class ForegroundRefiner(nn.Module):
    """Full-resolution foreground logits from the stride-4 ones, the features and the image.

    ``refined = up(logits) + residual(image, up(logits), up(features))`` with bilinear upsampling
    (:func:`upsample_logits`) and three 3x3 convolutions for the residual. Carving with stride-4
    foreground maps blurs every silhouette by about two image pixels per side, which in 5 views grows
    the visual hull (and the boxes found on it) well beyond the objects; the image itself has the
    sharp edges. The last convolution starts at zero, so a fresh refiner returns exactly the
    upsampled logits.

    Example:
        >>> refiner = ForegroundRefiner(16)
        >>> logits = torch.randn(2, 1, 8, 8)
        >>> out = refiner(torch.rand(2, 3, 32, 32), torch.randn(2, 16, 8, 8), logits)
        >>> out.shape, bool(torch.allclose(out, upsample_logits(logits, (32, 32))))
        (torch.Size([2, 1, 32, 32]), True)
    """

    def __init__(self, feature_channels: int, hidden: int = 16):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(3 + 1 + feature_channels, hidden, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, 3, padding=1),
        )
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    def forward(self, images: Tensor, features: Tensor, logits: Tensor) -> Tensor:
        """images (N, 3, H, W) in [0, 1], features (N, C, h, w), logits (N, 1, h, w) -> logits (N, 1, H, W)."""
        size = tuple(images.shape[-2:])
        up = upsample_logits(logits, size)
        up_features = F.interpolate(features, size=size, mode="bilinear", align_corners=False)
        return up + self.layers(torch.cat([images - 0.5, up, up_features], dim=1))
