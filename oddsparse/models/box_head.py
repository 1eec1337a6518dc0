"""Second-stage box head: refine and score the boxes that density + DBSCAN propose.

The boxes of :func:`~oddsparse.models.detector.estimate_boxes` are fitted to the carved visual hull.
With a few views at the published orbit's low elevation (about 28 degrees) the hull over a flat object
is a "tent": it overestimates the height by up to ``w / 2 * tan(elevation)`` for a top face of width
``w``, and by a voxel or two on every side, so many boxes miss the 3D IoU > 0.5 of the benchmark by a
little (measured in docs/RESULTS.md: with the ground-truth height alone the recall at IoU 0.5 of the
proposals goes from 0.62 to 0.87). As in two-stage detectors (Faster R-CNN's box head), a small 3D
CNN reads each proposal's RoI volume, taken with context around the box, and predicts

- **deltas** ``(dx, dy, dz, dlog sx, dlog sy, dlog sz, dyaw)``: the centre offset in the proposal's own
  frame divided by its size, the log size ratios, and the yaw change (yaw boxes are defined modulo
  pi; the GT box is first written in the one of its two size orders whose yaw is nearest,
  :func:`align_boxes`, so ``dyaw`` lies in [-pi/4, pi/4]);
- an **objectness** logit: whether the proposal is an object (matched to a GT box) or a ghost of the
  hull / a fragment, so that the detector can drop ghosts before the matcher compares objects.

:func:`box_deltas` and :func:`apply_box_deltas` are exact inverses (tested).
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from oddsparse.geometry.boxes import YawBoxes, yaw_to_rotation

__all__ = ["BoxHead", "align_boxes", "box_deltas", "apply_box_deltas", "context_boxes", "DELTA_CLAMP"]

#: Bound on the log size ratio a refinement may apply (exp(1) = 2.7x either way).
DELTA_CLAMP = 1.0


def _wrap(angle: Tensor, period: float) -> Tensor:
    """Angle wrapped into [-period / 2, period / 2)."""
    return torch.remainder(angle + period / 2, period) - period / 2


def align_boxes(target: YawBoxes, reference: YawBoxes) -> YawBoxes:
    """``target`` boxes rewritten in the size order whose yaw is nearest to ``reference`` (modulo pi).

    A yaw box ``(size_x, size_y, yaw)`` is the same box as ``(size_y, size_x, yaw + pi / 2)`` and as
    ``(size_x, size_y, yaw + pi)``; of these the one with ``|yaw - reference.yaw| <= pi / 4`` is
    returned (yaw written as ``reference.yaw + d``, ``d`` in [-pi/4, pi/4)).
    """
    d0 = _wrap(target.yaw - reference.yaw, math.pi)
    d1 = _wrap(target.yaw + math.pi / 2 - reference.yaw, math.pi)
    swap = d1.abs() < d0.abs()
    size = target.size.clone()
    size[swap, 0], size[swap, 1] = target.size[swap, 1], target.size[swap, 0]
    delta = torch.where(swap, d1, d0)
    return YawBoxes(target.center, size, reference.yaw + delta)


def box_deltas(proposals: YawBoxes, targets: YawBoxes, eps: float = 1e-6) -> Tensor:
    """(O, 7) deltas taking ``proposals`` to ``targets`` (see the module docstring); targets are aligned first."""
    aligned = align_boxes(targets, proposals)
    rotation = yaw_to_rotation(proposals.yaw.to(proposals.center.dtype))  # box -> world
    offset = torch.einsum("oji,oj->oi", rotation, aligned.center - proposals.center)  # world -> box frame
    size = proposals.size.clamp(min=eps)
    return torch.cat([offset / size, torch.log(aligned.size.clamp(min=eps) / size),
                      (aligned.yaw - proposals.yaw)[:, None]], dim=1)


def apply_box_deltas(proposals: YawBoxes, deltas: Tensor, clamp: float = DELTA_CLAMP) -> YawBoxes:
    """Boxes from ``proposals`` moved by ``deltas`` (O, 7); log size ratios clamped to ``[-clamp, clamp]``."""
    rotation = yaw_to_rotation(proposals.yaw.to(proposals.center.dtype))
    offset = deltas[:, :3] * proposals.size
    center = proposals.center + torch.einsum("oij,oj->oi", rotation, offset)
    size = proposals.size * torch.exp(deltas[:, 3:6].clamp(-clamp, clamp))
    return YawBoxes(center, size, proposals.yaw + deltas[:, 6])


def context_boxes(boxes: YawBoxes, context: float, margin: float) -> YawBoxes:
    """The same boxes grown by the factor ``context`` plus ``margin`` metres on every side (RoI with context)."""
    return YawBoxes(boxes.center, boxes.size * context + 2 * margin, boxes.yaw)


class BoxHead(nn.Module):
    """3D CNN on a proposal's RoI volume -> 7 box deltas and an objectness logit.

    Args:
        in_channels: channels of the RoI volume (F_v, opacity and the carved-hull indicator).
        resolution: r, cells per axis of the RoI volume (a power of two >= 2).
        channels: width of the CNN.
        context: the RoI covers the proposal grown by this factor (so the head sees past a too small box).
        margin: metres added on every side of the grown RoI.
        inputs: ``"all"`` reads every channel; ``"geometry"`` only the last two (opacity and the carved-hull
            indicator of :meth:`~oddsparse.models.detector.OddOneOutDetector.proposal_volumes`), not the
            appearance features F_v: a head that cannot tell categories or renderings apart by their look
            (the volumes it is given keep every channel either way).
        size_input: the MLP also reads each proposal's size, ``log(size / size_unit)`` per axis (``forward``'s
            ``sizes``; not in the paper). The RoI volume is stretched to the box, so without it the head cannot
            tell a box one voxel tall (the hull's "tent" over a flat part, often twice too tall) from a tall
            one read at the same cells.
        size_unit: metres of one unit of the size input (the detector gives its voxel edge: a size in voxels).

    Example:
        >>> head = BoxHead(in_channels=6, resolution=8, channels=16)
        >>> deltas, objectness = head(torch.randn(3, 6, 8, 8, 8))
        >>> deltas.shape, objectness.shape
        (torch.Size([3, 7]), torch.Size([3]))
    """

    def __init__(self, in_channels: int, resolution: int = 16, channels: int = 32, *, context: float = 1.5,
                 margin: float = 0.02, inputs: Literal["all", "geometry"] = "all", size_input: bool = False,
                 size_unit: float = 0.04):
        super().__init__()
        if not size_unit > 0:
            raise ValueError(f"BoxHead: size_unit must be > 0, got {size_unit}")
        self.size_input, self.size_unit = bool(size_input), float(size_unit)
        if inputs not in ("all", "geometry"):
            raise ValueError(f"BoxHead: inputs must be 'all' or 'geometry', got {inputs!r}")
        if inputs == "geometry" and in_channels < 2:
            raise ValueError(f"BoxHead: inputs='geometry' reads the last 2 channels, got in_channels={in_channels}")
        self.in_channels, self.inputs = in_channels, inputs
        if resolution < 2 or resolution & (resolution - 1):
            raise ValueError(f"BoxHead: resolution must be a power of two >= 2, got {resolution}")
        if context < 1:
            raise ValueError(f"BoxHead: context must be >= 1, got {context}")
        self.resolution, self.context, self.margin = resolution, context, margin
        read = 2 if inputs == "geometry" else in_channels
        layers: list[nn.Module] = [nn.Conv3d(read, channels, 3, padding=1), nn.GroupNorm(8, channels), nn.GELU()]
        width, size = channels, resolution
        while size > 2:
            out = min(4 * channels, 2 * width)
            layers += [nn.Conv3d(width, out, 3, stride=2, padding=1), nn.GroupNorm(8, out), nn.GELU()]
            width, size = out, size // 2
        layers += [nn.Conv3d(width, 2 * width, 2), nn.GELU()]  # (O, 2w, 1, 1, 1)
        self.cnn = nn.Sequential(*layers)
        self.mlp = nn.Sequential(nn.Linear(2 * width + (3 if self.size_input else 0), 2 * width), nn.GELU(),
                                 nn.Linear(2 * width, 8))
        nn.init.zeros_(self.mlp[-1].weight)  # a fresh head leaves the proposals unchanged
        nn.init.zeros_(self.mlp[-1].bias)

    def reset_parameters(self) -> None:
        """Give every weight the value a new head of the same arguments gets (the same values where the torch
        seed is the same: the layers draw in the order of construction), e.g. to train a head afresh."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, volumes: Tensor, sizes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """volumes (O, C, r, r, r) and the proposals' sizes (O, 3) in metres -> deltas (O, 7), objectness logits
        (O,). ``sizes`` is read only with ``size_input`` (and then required)."""
        if volumes.shape[1] != self.in_channels:
            raise ValueError(f"BoxHead: expected {self.in_channels} channels, got volumes {tuple(volumes.shape)}")
        if self.inputs == "geometry":
            volumes = volumes[:, -2:]  # (O, 2, r, r, r): opacity, carved
        features = self.cnn(volumes).flatten(1)
        if self.size_input:
            if sizes is None or sizes.shape != (volumes.shape[0], 3):
                raise ValueError(f"BoxHead: size_input needs sizes (O, 3) for {volumes.shape[0]} volumes, got "
                                 f"{None if sizes is None else tuple(sizes.shape)}")
            log_size = torch.log(sizes.to(features).clamp(min=1e-3 * self.size_unit) / self.size_unit)
            features = torch.cat([features, log_size], dim=1)
        out = self.mlp(features)
        return out[:, :7], out[:, 7]
