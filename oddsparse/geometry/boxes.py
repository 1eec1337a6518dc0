"""Yaw-oriented 3D boxes: fitting to occupancy clusters, corners, exact 3D IoU.

A yaw box is ``(center (O, 3), size (O, 3), yaw (O,))``: ``size`` is measured in the box's own
frame, which is the world frame rotated by ``yaw`` about world z (``rotation = Rz(yaw)``, box
frame -> world). This is the published scenes' object box (``location``, ``bbox[1]``,
``rotation_matrix``). Functions take plain tensors, a :class:`YawBoxes`, or any object with
``center``, ``size`` and ``rotation`` (O, 3, 3) attributes (e.g. the scene type's boxes).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from oddsparse.structures.sparse import SparseVoxels

__all__ = ["YawBoxes", "yaw_to_rotation", "rotation_to_yaw", "as_yaw_boxes", "yaw_boxes_to_corners",
           "box_iou_3d", "box_intersection_3d", "nms_boxes", "rotated_rect_intersection", "min_area_rectangle",
           "boxes_from_occupancy", "merge_floating_clusters", "match_boxes", "consensus_boxes",
           "registration_candidates"]


class YawBoxes(NamedTuple):
    """O yaw-oriented boxes: center (O, 3), size (O, 3) in the box frame, yaw (O,) radians about z."""

    center: Tensor
    size: Tensor
    yaw: Tensor

    @property
    def rotation(self) -> Tensor:
        """(O, 3, 3) box-to-world rotations."""
        return yaw_to_rotation(self.yaw)


def yaw_to_rotation(yaw: Tensor) -> Tensor:
    """(...,) yaw about world z -> (..., 3, 3) rotation matrices (box frame -> world)."""
    cos, sin = torch.cos(yaw), torch.sin(yaw)
    zeros, ones = torch.zeros_like(yaw), torch.ones_like(yaw)
    return torch.stack([cos, -sin, zeros, sin, cos, zeros, zeros, zeros, ones], dim=-1).reshape(*yaw.shape, 3, 3)


def rotation_to_yaw(rotation: Tensor, atol: float = 1e-4) -> Tensor:
    """(..., 3, 3) rotations about z (or the 3x3 block of 4x4 transforms) -> (...,) yaw.

    Raises ``ValueError`` when a rotation tilts the z axis (it is not a yaw).
    """
    rotation = rotation[..., :3, :3]
    z_axis = rotation[..., :, 2]
    if rotation.numel() and not torch.allclose(z_axis, torch.tensor([0.0, 0.0, 1.0], dtype=rotation.dtype,
                                                                     device=rotation.device).expand_as(z_axis), atol=atol):
        raise ValueError("rotation_to_yaw: rotation is not a rotation about world z (its z axis is tilted)")
    return torch.atan2(rotation[..., 1, 0], rotation[..., 0, 0])


def as_yaw_boxes(boxes) -> YawBoxes:
    """Accept a YawBoxes, a (center, size, yaw) tuple, or an object with center/size/rotation."""
    if isinstance(boxes, YawBoxes):
        return boxes
    if isinstance(boxes, (tuple, list)) and len(boxes) == 3:
        center, size, yaw = (torch.as_tensor(t) for t in boxes)
        return YawBoxes(center, size, yaw)
    if hasattr(boxes, "center") and hasattr(boxes, "size") and hasattr(boxes, "rotation"):
        rotation = torch.as_tensor(boxes.rotation)
        return YawBoxes(torch.as_tensor(boxes.center), torch.as_tensor(boxes.size), rotation_to_yaw(rotation))
    raise TypeError(f"expected YawBoxes, (center, size, yaw) or an object with center/size/rotation, got {type(boxes)}")


def yaw_boxes_to_corners(center: Tensor, size: Tensor, yaw: Tensor) -> Tensor:
    """(O, 8, 3) world corners. Corner ``c`` has box-frame signs ``(sx, sy, sz)`` from bits
    ``(c >> 2, c >> 1, c) & 1`` (0 -> -, 1 -> +): corners 0-3 are x-, then y-/y+ pairs, z-/z+ inner."""
    signs = torch.tensor([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)], dtype=center.dtype,
                         device=center.device) * 2 - 1  # (8, 3)
    local = signs[None] * size[:, None] / 2  # (O, 8, 3)
    return local @ yaw_to_rotation(yaw.to(center.dtype)).transpose(-1, -2) + center[:, None]


def _rect_corners_xy(center: Tensor, size: Tensor, yaw: Tensor) -> Tensor:
    """(..., 4, 2) counter-clockwise xy corners of yaw rectangles."""
    signs = center.new_tensor([[-1, -1], [1, -1], [1, 1], [-1, 1]])
    local = signs * size[..., None, :2] / 2  # (..., 4, 2)
    cos, sin = torch.cos(yaw)[..., None], torch.sin(yaw)[..., None]
    x = local[..., 0] * cos - local[..., 1] * sin
    y = local[..., 0] * sin + local[..., 1] * cos
    return torch.stack([x, y], dim=-1) + center[..., None, :2]


def _inside_convex(points: Tensor, polygon: Tensor, eps: float) -> Tensor:
    """points (..., P, 2) inside counter-clockwise convex polygon (..., 4, 2) (boundary included)."""
    edge_start = polygon[..., None, :, :]  # (..., 1, 4, 2)
    edge = polygon.roll(-1, dims=-2)[..., None, :, :] - edge_start
    rel = points[..., :, None, :] - edge_start  # (..., P, 4, 2)
    cross = edge[..., 0] * rel[..., 1] - edge[..., 1] * rel[..., 0]
    return (cross >= -eps).all(dim=-1)


def rotated_rect_intersection(rect_a: Tensor, rect_b: Tensor, eps: float = 1e-9) -> Tensor:
    """Exact area of the intersection of convex quadrilaterals (..., 4, 2) (counter-clockwise).

    The intersection polygon's vertices are the corners of each rectangle inside the other and the
    crossings of their edges; they are ordered by angle about their mean and summed with the
    shoelace formula (vectorised over any leading dims; exact up to floating point).
    """
    # Edge-edge crossings: edges i of a and j of b, p = a_i + t (a_{i+1} - a_i) = b_j + s (b_{j+1} - b_j).
    a0 = rect_a[..., :, None, :]
    da = rect_a.roll(-1, dims=-2)[..., :, None, :] - a0  # (..., 4, 1, 2)
    b0 = rect_b[..., None, :, :]
    db = rect_b.roll(-1, dims=-2)[..., None, :, :] - b0  # (..., 1, 4, 2)
    denom = da[..., 0] * db[..., 1] - da[..., 1] * db[..., 0]  # (..., 4, 4)
    diff = b0 - a0
    safe = torch.where(denom.abs() > eps, denom, torch.ones_like(denom))
    t = (diff[..., 0] * db[..., 1] - diff[..., 1] * db[..., 0]) / safe
    s = (diff[..., 0] * da[..., 1] - diff[..., 1] * da[..., 0]) / safe
    crossing_ok = (denom.abs() > eps) & (t >= 0) & (t <= 1) & (s >= 0) & (s <= 1)
    crossings = (a0 + t[..., None] * da).flatten(-3, -2)  # (..., 16, 2)

    scale = max(1.0, float(torch.cat([rect_a, rect_b], dim=-2).abs().max())) if rect_a.numel() else 1.0
    a_in_b = _inside_convex(rect_a, rect_b, 1e-9 * scale * scale)
    b_in_a = _inside_convex(rect_b, rect_a, 1e-9 * scale * scale)
    points = torch.cat([rect_a, rect_b, crossings], dim=-2)  # (..., 24, 2)
    valid = torch.cat([a_in_b, b_in_a, crossing_ok.flatten(-2)], dim=-1)  # (..., 24)

    count = valid.sum(dim=-1, keepdim=True).clamp(min=1)
    mean = (points * valid[..., None]).sum(dim=-2, keepdim=True) / count[..., None]
    rel = points - mean
    angle = torch.atan2(rel[..., 1], rel[..., 0])
    angle = torch.where(valid, angle, torch.full_like(angle, 10.0))  # invalid last
    order = angle.argsort(dim=-1)
    ordered = torch.gather(points, -2, order[..., None].expand_as(points))
    ordered_valid = torch.gather(valid, -1, order)
    first = ordered[..., :1, :].expand_as(ordered)
    ordered = torch.where(ordered_valid[..., None], ordered, first)  # padding repeats the first vertex
    following = ordered.roll(-1, dims=-2)
    area = 0.5 * (ordered[..., 0] * following[..., 1] - ordered[..., 1] * following[..., 0]).sum(dim=-1)
    return torch.where(valid.sum(dim=-1) >= 3, area.abs(), torch.zeros_like(area))


def box_intersection_3d(boxes_a, boxes_b) -> Tensor:
    """(O_a, O_b) float64 volume of the intersection of yaw-oriented 3D boxes (exact: rotated-rectangle overlap
    x z overlap). Boxes as in :func:`box_iou_3d`."""
    a, b = as_yaw_boxes(boxes_a), as_yaw_boxes(boxes_b)
    dtype = torch.float64
    ca, sa, ya = a.center.to(dtype), a.size.to(dtype), a.yaw.to(dtype)
    cb, sb, yb = b.center.to(dtype).to(ca.device), b.size.to(dtype).to(ca.device), b.yaw.to(dtype).to(ca.device)
    rect_a = _rect_corners_xy(ca, sa, ya)[:, None].expand(-1, cb.shape[0], 4, 2)  # (O_a, O_b, 4, 2)
    rect_b = _rect_corners_xy(cb, sb, yb)[None].expand(ca.shape[0], -1, 4, 2)
    area_xy = rotated_rect_intersection(rect_a, rect_b)
    z_low = torch.maximum((ca[:, None, 2] - sa[:, None, 2] / 2), (cb[None, :, 2] - sb[None, :, 2] / 2))
    z_high = torch.minimum((ca[:, None, 2] + sa[:, None, 2] / 2), (cb[None, :, 2] + sb[None, :, 2] / 2))
    return area_xy * (z_high - z_low).clamp(min=0)


def box_iou_3d(boxes_a, boxes_b) -> Tensor:
    """(O_a, O_b) IoU of yaw-oriented 3D boxes (exact: rotated-rectangle overlap x z overlap).

    Args:
        boxes_a, boxes_b: :class:`YawBoxes`, ``(center, size, yaw)`` tuples, or objects with
            ``center``/``size``/``rotation`` (O, 3, 3) yaw rotations.
    """
    a, b = as_yaw_boxes(boxes_a), as_yaw_boxes(boxes_b)
    intersection = box_intersection_3d(a, b)
    volume_a = a.size.to(torch.float64).prod(dim=-1)
    volume_b = b.size.to(torch.float64).to(volume_a.device).prod(dim=-1)
    union = volume_a[:, None] + volume_b[None] - intersection
    return intersection / union.clamp(min=1e-12)


def nms_boxes(boxes, scores: Tensor, scene_index: Tensor, iou_threshold: float) -> Tensor:
    """(O,) bool: the boxes greedy non-maximum suppression keeps, scene by scene: in order of ``scores``
    (highest first), a box is dropped where its 3D IoU with a box kept before it in its scene exceeds
    ``iou_threshold``. Ties keep the earlier box."""
    b = as_yaw_boxes(boxes)
    keep = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
    for scene in torch.unique(scene_index).tolist():
        rows = torch.nonzero(scene_index == scene)[:, 0]
        rows = rows[torch.sort(scores[rows], descending=True, stable=True).indices]
        subset = YawBoxes(*(t[rows] for t in b))
        iou = box_iou_3d(subset, subset)
        kept: list[int] = []
        for i in range(rows.numel()):
            if all(float(iou[i, j]) <= iou_threshold for j in kept):
                kept.append(i)
        keep[rows[kept]] = True
    return keep


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """(P, 2) -> (Q, 2) counter-clockwise convex hull (Andrew's monotone chain)."""
    pts = np.unique(points, axis=0)
    if len(pts) <= 2:
        return pts

    def half(seq):
        chain = []
        for p in seq:
            while len(chain) >= 2:
                o, a = chain[-2], chain[-1]
                if (a[0] - o[0]) * (p[1] - o[1]) - (a[1] - o[1]) * (p[0] - o[0]) > 1e-12:
                    break
                chain.pop()
            chain.append(p)
        return chain

    lower = half(pts)
    upper = half(pts[::-1])
    return np.array(lower[:-1] + upper[:-1])


def min_area_rectangle(points_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Minimum-area enclosing rectangle of (P, 2) points (rotating calipers over hull edges).

    Returns ``(center (2,), size (2,), yaw)`` with ``size[0] >= size[1]`` and yaw in [-pi/2, pi/2).
    """
    hull = _convex_hull(np.asarray(points_xy, dtype=np.float64))
    if len(hull) == 2:  # collinear points: the segment's direction
        candidates = [math.atan2(hull[1, 1] - hull[0, 1], hull[1, 0] - hull[0, 0])]
    elif len(hull) < 2:
        candidates = [0.0]
    else:
        edges = np.roll(hull, -1, axis=0) - hull
        candidates = np.arctan2(edges[:, 1], edges[:, 0])
    best = None
    for angle in candidates:
        cos, sin = math.cos(angle), math.sin(angle)
        local = hull @ np.array([[cos, -sin], [sin, cos]])  # rows: (x cos + y sin, -x sin + y cos)
        low, high = local.min(axis=0), local.max(axis=0)
        area = float(np.prod(high - low))
        if best is None or area < best[0] - 1e-12:
            best = (area, angle, low, high)
    _, angle, low, high = best
    size = high - low
    mid = (low + high) / 2
    cos, sin = math.cos(angle), math.sin(angle)
    center = np.array([mid[0] * cos - mid[1] * sin, mid[0] * sin + mid[1] * cos])
    if size[0] < size[1]:
        size = size[::-1].copy()
        angle += math.pi / 2
    yaw = (angle + math.pi / 2) % math.pi - math.pi / 2
    return center, size, yaw


def merge_floating_clusters(index: np.ndarray, labels: np.ndarray, *, lift: float, reach: float) -> np.ndarray:
    """Cluster labels with every floating cluster merged into the grounded cluster below or beside it.

    Instances stand on the ground, so a cluster whose lowest voxel lies more than ``lift`` voxels above
    the scene's lowest occupied voxel is a piece of an object whose connecting part the density missed
    (a lamp's shade above its thin stem, a rocket's nose). It joins the grounded cluster (lowest voxel
    within ``lift`` of the ground) with the smallest xy gap between their voxels, if that gap is at most
    ``reach`` voxels; otherwise it stays a cluster of its own. Not in the paper: a box-estimation prior.

    Args:
        index: (P, 3) voxel indices (x, y, z) of one scene. labels: (P,) DBSCAN labels (-1: noise, kept).
        lift, reach: in voxels.
    Returns:
        (P,) labels; a merged cluster takes its grounded cluster's label.
    """
    from scipy.spatial import cKDTree

    labels = labels.copy()
    clusters = np.unique(labels[labels >= 0])
    if len(clusters) < 2:
        return labels
    members = {int(c): index[labels == c] for c in clusters}
    low = {c: float(voxels[:, 2].min()) for c, voxels in members.items()}
    ground = min(low.values())
    grounded = [c for c in low if low[c] - ground <= lift]
    floating = [c for c in low if low[c] - ground > lift]
    if not floating or not grounded:
        return labels
    footprint = {c: np.unique(voxels[:, :2], axis=0) for c, voxels in members.items()}
    trees = {g: cKDTree(footprint[g]) for g in grounded}
    target = {}
    for f in floating:
        gap, g = min((float(trees[g].query(footprint[f], k=1)[0].min()), g) for g in grounded)
        if gap <= reach:
            target[f] = g
    for f, g in target.items():
        labels[labels == f] = g
    return labels


def boxes_from_occupancy(occupancy: SparseVoxels, *, eps: float = 1.5, min_samples: int = 1,
                         min_voxels: int = 4, merge_floating: float = 0.0, merge_reach: float = 2.0) -> list[YawBoxes]:
    """Object boxes from a sparse occupancy: DBSCAN on voxel centres, one yaw box per cluster.

    Args:
        occupancy: :class:`SparseVoxels`; every present site counts as occupied.
        eps: DBSCAN neighbourhood radius in voxels (1.5 links face and edge neighbours).
        min_samples: DBSCAN core-point threshold (1 = connected components).
        min_voxels: clusters with fewer voxels are dropped, as is DBSCAN noise.
        merge_floating: when > 0, clusters whose lowest voxel is more than this many voxels above the
            scene's lowest one join the nearest grounded cluster within ``merge_reach`` voxels in xy
            (:func:`merge_floating_clusters`); 0: off.
    Returns:
        One :class:`YawBoxes` per scene (``occupancy.batch_size`` items; O may be 0). The xy
        footprint is the minimum-area rectangle around the cluster's voxel squares (their
        corners), yaw in [-pi/2, pi/2) with ``size_x >= size_y``; z spans the voxels' faces.
        Boxes are sorted by decreasing voxel count.
    """
    from sklearn.cluster import DBSCAN

    grid = occupancy.grid
    voxel = grid.voxel_size
    coords = occupancy.coords.cpu().numpy()
    half_square = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]]) * voxel
    out = []
    for b in range(occupancy.batch_size):
        index = coords[coords[:, 0] == b, 1:].astype(np.float64)
        centers, sizes, yaws, counts = [], [], [], []
        if len(index):
            labels = DBSCAN(eps=eps, min_samples=min_samples).fit_predict(index)
            if merge_floating > 0:
                labels = merge_floating_clusters(index, labels, lift=merge_floating, reach=merge_reach)
            world = np.asarray(grid.origin) + (index + 0.5) * voxel
            for label in np.unique(labels[labels >= 0]):
                members = world[labels == label]
                if len(members) < min_voxels:
                    continue
                footprint = (members[:, None, :2] + half_square[None]).reshape(-1, 2)
                center_xy, size_xy, yaw = min_area_rectangle(footprint)
                z_low, z_high = members[:, 2].min() - voxel / 2, members[:, 2].max() + voxel / 2
                centers.append([center_xy[0], center_xy[1], (z_low + z_high) / 2])
                sizes.append([size_xy[0], size_xy[1], z_high - z_low])
                yaws.append(yaw)
                counts.append(len(members))
        order = np.argsort(-np.asarray(counts, dtype=np.int64), kind="stable")
        dtype = torch.float32
        out.append(YawBoxes(torch.tensor(np.asarray(centers).reshape(-1, 3)[order], dtype=dtype),
                            torch.tensor(np.asarray(sizes).reshape(-1, 3)[order], dtype=dtype),
                            torch.tensor(np.asarray(yaws, dtype=np.float64)[order], dtype=dtype)))
    return out


def match_boxes(boxes_a, boxes_b, iou_threshold: float = 0.5) -> tuple[Tensor, Tensor]:
    """One-to-one matching of two box sets maximising the total IoU of eligible pairs (Hungarian).

    Pairs with IoU <= ``iou_threshold`` are ineligible (given zero weight before the assignment), so
    a low-IoU pair never displaces an eligible one.

    Args:
        boxes_a, boxes_b: yaw boxes of one scene (any form :func:`as_yaw_boxes` accepts).
        iou_threshold: a pair counts only when its IoU is strictly above this.
    Returns:
        ``(b_of_a, iou)``: (O_a,) int64 index of the box of ``boxes_b`` matched to each box of
        ``boxes_a`` or -1, and (O_a,) float64 IoU of that match (0 where unmatched).
    """
    from scipy.optimize import linear_sum_assignment

    a, b = as_yaw_boxes(boxes_a), as_yaw_boxes(boxes_b)
    num_a, num_b = a.center.shape[0], b.center.shape[0]
    b_of_a = torch.full((num_a,), -1, dtype=torch.int64)
    matched_iou = torch.zeros(num_a, dtype=torch.float64)
    if num_a == 0 or num_b == 0:
        return b_of_a, matched_iou
    iou = box_iou_3d(a, b).detach().cpu().double().numpy()  # (O_a, O_b)
    eligible = np.where(iou > iou_threshold, iou, 0.0)
    rows, cols = linear_sum_assignment(eligible, maximize=True)
    for row, col in zip(rows.tolist(), cols.tolist()):
        if iou[row, col] > iou_threshold:
            b_of_a[row], matched_iou[row] = col, float(iou[row, col])
    return b_of_a, matched_iou


def consensus_boxes(boxes, scene_index: Tensor, *, min_objects: int = 3) -> YawBoxes:
    """Scene-consensus boxes: the instances of a scene share one size and stand on one plane.

    An odd-one-out scene holds several instances of the same object, so each box of a scene with at
    least ``min_objects`` boxes takes the scene's median size (element-wise median of the boxes'
    (x, y, z) sizes, which should be in canonical form, ``size_x >= size_y``) and the median bottom
    (``center_z - size_z / 2``) of the scene's boxes; its xy centre and yaw are kept. A median of an
    even count is the lower of the two middle values (:func:`torch.median`). Scenes with fewer boxes
    are returned unchanged (no majority to agree on). Not in the paper: a box-estimation prior,
    it never looks at anomaly labels.

    Args:
        boxes: O yaw boxes (packed over scenes; any form :func:`as_yaw_boxes` accepts).
        scene_index: (O,) int64 scene of each box.
        min_objects: smallest box count of a scene that is made to agree.
    Returns:
        :class:`YawBoxes` (O,) in the input order.

    Example:
        >>> boxes = YawBoxes(torch.tensor([[0., 0., .05], [1., 0., .06], [2., 0., .05]]),
        ...                  torch.tensor([[.2, .1, .1], [.3, .1, .12], [.2, .12, .1]]), torch.zeros(3))
        >>> consensus_boxes(boxes, torch.zeros(3, dtype=torch.int64)).size[1].tolist()
        [0.20000000298023224, 0.10000000149011612, 0.10000000149011612]
    """
    boxes = as_yaw_boxes(boxes)
    if scene_index.shape != boxes.yaw.shape:
        raise ValueError(f"consensus_boxes: scene_index {tuple(scene_index.shape)} does not match "
                         f"{boxes.yaw.shape[0]} boxes")
    center, size = boxes.center.clone(), boxes.size.clone()
    for scene in torch.unique(scene_index).tolist():
        rows = torch.nonzero(scene_index == scene)[:, 0]
        if rows.numel() < min_objects:
            continue
        median_size = boxes.size[rows].median(dim=0).values
        bottom = (boxes.center[rows, 2] - boxes.size[rows, 2] / 2).median()
        size[rows] = median_size
        center[rows, 2] = bottom + median_size[2] / 2
    return YawBoxes(center, size, boxes.yaw)


def registration_candidates(boxes, yaw_offsets: Sequence[float] = (0.0,), shifts: Sequence[float] = (0.0,),
                            quarter_turns: bool = True) -> YawBoxes:
    """Candidate placements of each box for registering its object to a reference (O * K boxes).

    Candidate (o, k) is box o turned by ``yaw_offset`` (radians) plus ``q * pi / 2`` about its
    vertical axis and moved by ``(dx, dy)`` (metres, in the world frame), for every ``yaw_offset``
    in ``yaw_offsets``, ``dx`` and ``dy`` in ``shifts`` and ``q`` in 0..3 (only 0 without
    ``quarter_turns``). An odd ``q`` swaps the box's x and y sizes, so the candidate covers the
    same footprint as the box turned by ``yaw_offset`` alone: the object volume read in the other
    axis order. Candidates are packed object-major (row ``o * K + k``); candidate 0 of every object
    is the box itself when ``0`` is in ``yaw_offsets`` and ``shifts`` and listed first.

    Returns:
        :class:`YawBoxes` (O * K,), with ``K = len(yaw_offsets) * len(shifts) ** 2 * (4 or 1)``.
    """
    boxes = as_yaw_boxes(boxes)
    dtype, device = boxes.center.dtype, boxes.center.device
    turns = range(4) if quarter_turns else range(1)
    table = [(q, offset, dx, dy) for q in turns for offset in yaw_offsets for dx in shifts for dy in shifts]
    q = torch.tensor([t[0] for t in table], device=device)
    yaw_offset = torch.tensor([t[1] for t in table], dtype=dtype, device=device) + q.to(dtype) * (math.pi / 2)
    shift = torch.tensor([[t[2], t[3], 0.0] for t in table], dtype=dtype, device=device)
    center = boxes.center[:, None, :] + shift[None]
    swap = (q % 2 == 1)[None, :, None]
    size = boxes.size[:, None, :].expand(-1, len(table), -1)
    size = torch.where(swap, size[..., [1, 0, 2]], size)
    yaw = boxes.yaw[:, None] + yaw_offset[None]
    return YawBoxes(center.reshape(-1, 3), size.reshape(-1, 3), yaw.reshape(-1))
