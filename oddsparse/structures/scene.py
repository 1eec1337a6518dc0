"""Scenes: calibrated multi-view images of several object instances, and batches of them.

Shapes use the glossary of :mod:`oddsparse`: V views, O objects, H/W image rows/columns, B scenes,
M views per scene in a batch. Cameras follow :mod:`oddsparse.geometry.conventions` (OpenCV
``world_to_cam``, pixel centres at index + 0.5, world z up).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields, replace
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["Boxes", "Scene", "SceneBatch"]


def _check_tensor(owner: str, name: str, value, shape: Sequence[Optional[int]], dtype: torch.dtype) -> None:
    """Raise ValueError unless ``value`` is a tensor of ``dtype`` whose shape matches ``shape`` (None = any)."""
    wanted = "(" + ", ".join("*" if s is None else str(s) for s in shape) + (",)" if len(shape) == 1 else ")")
    if not isinstance(value, Tensor):
        raise ValueError(f"{owner}.{name} must be a {wanted} {dtype} tensor, got {type(value).__name__}")
    ok = value.dim() == len(shape) and all(s is None or s == d for s, d in zip(shape, value.shape))
    if not ok:
        raise ValueError(f"{owner}.{name} must have shape {wanted} ({dtype}), got {tuple(value.shape)}")
    if value.dtype != dtype:
        raise ValueError(f"{owner}.{name} must be {dtype}, got {value.dtype}")


# Corner sign pattern of a unit box: corner k has signs (x, y, z) = bits of k (z fastest).
_CORNER_SIGNS = torch.tensor([[sx, sy, sz] for sx in (-1.0, 1.0) for sy in (-1.0, 1.0) for sz in (-1.0, 1.0)])


@dataclass(frozen=True)
class Boxes:
    """Oriented 3D boxes in world coordinates.

    A point ``p`` of the box satisfies ``p = center + rotation @ q`` with ``|q| <= size / 2``
    componentwise, i.e. ``size`` is measured along the box's own axes (the columns of ``rotation``).

    Attributes:
        center: (O, 3) float32 world position of the box centre.
        size: (O, 3) float32 edge lengths along the box axes (>= 0).
        rotation: (O, 3, 3) float32 box-to-world rotation.

    Example:
        >>> boxes = Boxes(torch.zeros(1, 3), torch.tensor([[2.0, 1.0, 1.0]]), torch.eye(3)[None])
        >>> boxes.corners().shape, boxes.corners()[0, -1]
        (torch.Size([1, 8, 3]), tensor([1.0000, 0.5000, 0.5000]))
    """

    center: Tensor
    size: Tensor
    rotation: Tensor

    def __post_init__(self):
        _check_tensor("Boxes", "center", self.center, (None, 3), torch.float32)
        num = self.center.shape[0]
        _check_tensor("Boxes", "size", self.size, (num, 3), torch.float32)
        _check_tensor("Boxes", "rotation", self.rotation, (num, 3, 3), torch.float32)
        for name in ("center", "size", "rotation"):
            if not torch.isfinite(getattr(self, name)).all():
                raise ValueError(f"Boxes.{name} must be finite")
        if (self.size < 0).any():
            raise ValueError("Boxes.size must be >= 0")

    def __len__(self) -> int:
        return self.center.shape[0]

    def __getitem__(self, index) -> "Boxes":
        """Select boxes with an int (also a NumPy or 0-dim tensor integer), slice, index tensor or bool mask;
        always returns Boxes."""
        if isinstance(index, numbers.Integral) or (torch.is_tensor(index) and index.dim() == 0):
            index = [int(index)]
        return Boxes(self.center[index], self.size[index], self.rotation[index])

    @property
    def yaw(self) -> Tensor:
        """(O,) rotation about world z in radians, ``atan2(R[1, 0], R[0, 0])`` (exact for yaw-only boxes)."""
        return torch.atan2(self.rotation[:, 1, 0], self.rotation[:, 0, 0])

    def corners(self) -> Tensor:
        """(O, 8, 3) world corners; corner ``k`` has box-frame signs given by the bits of ``k`` (x, y, z; z fastest)."""
        signs = _CORNER_SIGNS.to(self.center)
        local = signs[None] * (self.size[:, None, :] / 2)  # (O, 8, 3)
        return self.center[:, None, :] + local @ self.rotation.transpose(-1, -2)

    def to(self, *args, **kwargs) -> "Boxes":
        return Boxes(self.center.to(*args, **kwargs), self.size.to(*args, **kwargs),
                     self.rotation.to(*args, **kwargs))

    @staticmethod
    def cat(boxes: Sequence["Boxes"]) -> "Boxes":
        """Concatenate along the object dimension."""
        return Boxes(torch.cat([b.center for b in boxes]), torch.cat([b.size for b in boxes]),
                     torch.cat([b.rotation for b in boxes]))


@dataclass(frozen=True)
class Scene:
    """One scene: V calibrated views of O object instances.

    Attributes:
        images: (V, H, W, 3) uint8 RGB.
        masks: (O, V, H, W) bool visible-pixel mask of each object in each view.
        depth: (V, H, W) float32 z-depth (distance along the camera z axis); background is ``+inf``.
        K: (V, 3, 3) float32 intrinsics for images of size (H, W).
        world_to_cam: (V, 4, 4) float32 OpenCV extrinsics.
        boxes: :class:`Boxes` with O oriented boxes.
        labels: (O,) int64, 1 = anomaly, 0 = normal.
        anomaly_types: O strings; the anomaly type word (``"crack"``, ``"miss"``, ...) of an
            anomalous object, and the empty string ``""`` for a normal one.
        object_names: O object names (the published ``objects[i].name``).
        name: scene name (its folder name).
        category: object category (ToysAD: scene name before its first ``_``).
        view_ids: (V,) int64 index of each loaded view among the scene's stored views.
        floor_mask: optional (V, H, W) bool visible floor pixels.

    Tensors of one scene share a device. Update with :meth:`replace`; select views with
    :meth:`select_views`.
    """

    images: Tensor
    masks: Tensor
    depth: Tensor
    K: Tensor
    world_to_cam: Tensor
    boxes: Boxes
    labels: Tensor
    anomaly_types: list
    object_names: list
    name: str
    category: str
    view_ids: Tensor
    floor_mask: Optional[Tensor] = None

    def __post_init__(self):
        _check_tensor("Scene", "images", self.images, (None, None, None, 3), torch.uint8)
        views, height, width, _ = self.images.shape
        _check_tensor("Scene", "masks", self.masks, (None, views, height, width), torch.bool)
        num = self.masks.shape[0]
        _check_tensor("Scene", "depth", self.depth, (views, height, width), torch.float32)
        _check_tensor("Scene", "K", self.K, (views, 3, 3), torch.float32)
        _check_tensor("Scene", "world_to_cam", self.world_to_cam, (views, 4, 4), torch.float32)
        _check_tensor("Scene", "labels", self.labels, (num,), torch.int64)
        _check_tensor("Scene", "view_ids", self.view_ids, (views,), torch.int64)
        if self.floor_mask is not None:
            _check_tensor("Scene", "floor_mask", self.floor_mask, (views, height, width), torch.bool)
        if not isinstance(self.boxes, Boxes) or len(self.boxes) != num:
            raise ValueError(f"Scene.boxes must be Boxes with O = {num} boxes, got {self.boxes!r:.80}")
        if ((self.labels != 0) & (self.labels != 1)).any():
            raise ValueError("Scene.labels must hold 0 (normal) or 1 (anomaly)")
        for name in ("anomaly_types", "object_names"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or len(value) != num or not all(isinstance(s, str) for s in value):
                raise ValueError(f"Scene.{name} must be a list of O = {num} strings, got {value!r:.80}")
        for i, (label, kind) in enumerate(zip(self.labels.tolist(), self.anomaly_types)):
            if bool(label) != bool(kind):
                raise ValueError(f"Scene.anomaly_types[{i}] = {kind!r} disagrees with labels[{i}] = {label}: "
                                 "anomalies carry a type word, normal objects the empty string")
        if not isinstance(self.name, str) or not isinstance(self.category, str):
            raise ValueError("Scene.name and Scene.category must be strings")
        object.__setattr__(self, "anomaly_types", list(self.anomaly_types))
        object.__setattr__(self, "object_names", list(self.object_names))

    @property
    def num_views(self) -> int:
        return self.images.shape[0]

    @property
    def num_objects(self) -> int:
        return self.masks.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W)."""
        return tuple(self.images.shape[1:3])

    @property
    def device(self) -> torch.device:
        return self.images.device

    def replace(self, **changes) -> "Scene":
        """A new Scene with some fields replaced (validated again)."""
        return replace(self, **changes)

    def select_views(self, index) -> "Scene":
        """The same scene restricted to views ``index`` (sequence or tensor of positions in this Scene, or a bool
        mask of its V views)."""
        index = torch.as_tensor(index, device=self.images.device).reshape(-1)
        if index.dtype == torch.bool:  # a mask, not the positions 0 and 1
            if index.numel() != self.num_views:
                raise ValueError(f"Scene.select_views: a bool mask needs {self.num_views} entries, got {index.numel()}")
            index = torch.nonzero(index)[:, 0]
        index = index.long()
        return self.replace(
            images=self.images[index], masks=self.masks[:, index], depth=self.depth[index], K=self.K[index],
            world_to_cam=self.world_to_cam[index], view_ids=self.view_ids[index],
            floor_mask=None if self.floor_mask is None else self.floor_mask[index])

    def to(self, device) -> "Scene":
        """Move all tensors to ``device`` (dtypes are kept: they are part of the contract)."""
        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (Tensor, Boxes)):
                changes[f.name] = value.to(device)
        return self.replace(**changes)

    def __repr__(self) -> str:
        return (f"Scene(name={self.name!r}, category={self.category!r}, views={self.num_views}, "
                f"objects={self.num_objects}, image_size={self.image_size}, labels={self.labels.tolist()})")


@dataclass(frozen=True)
class SceneBatch:
    """B scenes collated for a model: views padded to M, objects packed.

    Attributes:
        scenes: the B source :class:`Scene` objects.
        images: (B, M, H, W, 3) uint8; padded views are zero.
        depth: (B, M, H, W) float32; padded views are ``+inf``.
        K: (B, M, 3, 3) float32; padded views hold the identity.
        world_to_cam: (B, M, 4, 4) float32; padded views hold the identity.
        view_ids: (B, M) int64 stored view index; ``-1`` on padded views.
        view_valid: (B, M) bool, False on padded views.
        masks: (O_total, M, H, W) bool packed object masks (False on padded views).
        boxes: :class:`Boxes` with O_total packed boxes.
        labels: (O_total,) int64, 1 = anomaly.
        object_batch_index: (O_total,) int64 scene of each packed object.
        num_objects: (B,) int64 objects per scene.
    """

    scenes: list
    images: Tensor
    depth: Tensor
    K: Tensor
    world_to_cam: Tensor
    view_ids: Tensor
    view_valid: Tensor
    masks: Tensor
    boxes: Boxes
    labels: Tensor
    object_batch_index: Tensor
    num_objects: Tensor

    def __post_init__(self):
        _check_tensor("SceneBatch", "images", self.images, (None, None, None, None, 3), torch.uint8)
        batch, views, height, width, _ = self.images.shape
        if len(self.scenes) != batch:
            raise ValueError(f"SceneBatch.scenes must hold B = {batch} scenes, got {len(self.scenes)}")
        _check_tensor("SceneBatch", "depth", self.depth, (batch, views, height, width), torch.float32)
        _check_tensor("SceneBatch", "K", self.K, (batch, views, 3, 3), torch.float32)
        _check_tensor("SceneBatch", "world_to_cam", self.world_to_cam, (batch, views, 4, 4), torch.float32)
        _check_tensor("SceneBatch", "view_ids", self.view_ids, (batch, views), torch.int64)
        _check_tensor("SceneBatch", "view_valid", self.view_valid, (batch, views), torch.bool)
        _check_tensor("SceneBatch", "masks", self.masks, (None, views, height, width), torch.bool)
        total = self.masks.shape[0]
        _check_tensor("SceneBatch", "labels", self.labels, (total,), torch.int64)
        _check_tensor("SceneBatch", "object_batch_index", self.object_batch_index, (total,), torch.int64)
        _check_tensor("SceneBatch", "num_objects", self.num_objects, (batch,), torch.int64)
        if not isinstance(self.boxes, Boxes) or len(self.boxes) != total:
            raise ValueError(f"SceneBatch.boxes must be Boxes with O_total = {total} boxes")

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    @property
    def num_views(self) -> int:
        """M, the padded number of views."""
        return self.images.shape[1]

    @classmethod
    def from_scenes(cls, scenes: Sequence[Scene]) -> "SceneBatch":
        """Collate scenes of one image size; views are padded to the largest count, objects packed."""
        scenes = list(scenes)
        if not scenes:
            raise ValueError("SceneBatch.from_scenes needs at least one scene")
        sizes = {s.image_size for s in scenes}
        if len(sizes) != 1:
            raise ValueError(f"cannot collate scenes of different image sizes {sorted(sizes)}: "
                             "read them with one image_size")
        height, width = sizes.pop()
        batch, views = len(scenes), max(s.num_views for s in scenes)
        device = scenes[0].device
        images = torch.zeros(batch, views, height, width, 3, dtype=torch.uint8, device=device)
        depth = torch.full((batch, views, height, width), math.inf, dtype=torch.float32, device=device)
        K = torch.eye(3, device=device).repeat(batch, views, 1, 1)
        world_to_cam = torch.eye(4, device=device).repeat(batch, views, 1, 1)
        view_ids = torch.full((batch, views), -1, dtype=torch.int64, device=device)
        view_valid = torch.zeros(batch, views, dtype=torch.bool, device=device)
        masks = []
        for b, scene in enumerate(scenes):
            v = scene.num_views
            images[b, :v] = scene.images
            depth[b, :v] = scene.depth
            K[b, :v] = scene.K
            world_to_cam[b, :v] = scene.world_to_cam
            view_ids[b, :v] = scene.view_ids
            view_valid[b, :v] = True
            padded = torch.zeros(scene.num_objects, views, height, width, dtype=torch.bool, device=device)
            padded[:, :v] = scene.masks
            masks.append(padded)
        num_objects = torch.tensor([s.num_objects for s in scenes], dtype=torch.int64, device=device)
        return cls(
            scenes=scenes, images=images, depth=depth, K=K, world_to_cam=world_to_cam, view_ids=view_ids,
            view_valid=view_valid, masks=torch.cat(masks), boxes=Boxes.cat([s.boxes for s in scenes]),
            labels=torch.cat([s.labels for s in scenes]),
            object_batch_index=torch.repeat_interleave(torch.arange(batch, device=device), num_objects),
            num_objects=num_objects)

    def to(self, device) -> "SceneBatch":
        changes = {"scenes": [s.to(device) for s in self.scenes]}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (Tensor, Boxes)):
                changes[f.name] = value.to(device)
        return replace(self, **changes)
