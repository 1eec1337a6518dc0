"""The odd-one-out detector: scene model + box estimation + object volumes + matcher.

For B scenes: :class:`~oddsparse.models.scene_model.SceneModel` gives sparse fields; voxels whose
opacity over one voxel, ``1 - exp(-density * voxel_size)``, exceeds ``density_threshold`` are
clustered by DBSCAN into yaw boxes (no ground-truth boxes or object counts at test time); an
optional :class:`~oddsparse.models.box_head.BoxHead` refines these proposals and drops those it
scores as ghosts of the visual hull; each box is RoI-sampled into an r^3 object volume of F_v and
beta; its occupied cells become tokens, and :class:`~oddsparse.models.matcher.AnomalyMatcher` gives
one anomaly logit per object.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from oddsparse.geometry.boxes import (YawBoxes, as_yaw_boxes, boxes_from_occupancy, consensus_boxes, match_boxes,
                                      nms_boxes, registration_candidates)
from oddsparse.geometry.roi import roi_sample
from oddsparse.models.box_head import BoxHead, apply_box_deltas, context_boxes
from oddsparse.models.fields import VoxelFields
from oddsparse.models.matcher import AnomalyMatcher, build_object_tokens, patch_cells
from oddsparse.models.scene_model import SceneModel, SceneOutput, images_to_float
from oddsparse.renderers.raymarch import roi_view_samples
from oddsparse.ops.scatter import scatter_mean
from oddsparse.structures.sparse import SparseVoxels

__all__ = ["OddOneOutDetector", "Detection", "voxel_opacity", "estimate_boxes", "assign_labels", "canonical_boxes",
           "build_detector", "load_detector"]


#: Length (metres) over which density is turned into the thresholded opacity: the paper's 4 cm voxel,
#: so that ``density_threshold = 0.2`` means the same density whatever the grid's voxel size.
OPACITY_LENGTH = 0.04


def voxel_opacity(fields: VoxelFields, length: float = OPACITY_LENGTH) -> Tensor:
    """(N,) opacity ``1 - exp(-density * length)`` of ``length`` metres of each voxel's density (what is thresholded)."""
    return 1.0 - torch.exp(-fields.density * length)


def estimate_boxes(fields: VoxelFields, threshold: float = 0.2, *, carved: Tensor | None = None, eps: float = 1.5,
                   min_voxels: int = 4, merge_floating: float = 0.0) -> tuple[YawBoxes, Tensor]:
    """Boxes of all scenes, packed: threshold voxel opacity, DBSCAN, yaw boxes.

    Args:
        fields: the scene model's fields.
        threshold: opacity (see :func:`voxel_opacity`) above which a voxel is an object voxel.
        carved: optional (N,) bool, True for voxels inside the carved hull itself (False on the
            dilation shell added for rendering, which would inflate every box by a voxel per side).
        merge_floating: see :func:`~oddsparse.geometry.boxes.boxes_from_occupancy` (0: off).
    Returns:
        ``(boxes, scene_index)``: packed :class:`YawBoxes` (O,) and (O,) int64 scene of each box.
    """
    keep = voxel_opacity(fields).detach() > threshold
    if carved is not None:
        keep = keep & carved
    occupied = fields.voxels.select(keep)
    per_scene = boxes_from_occupancy(occupied, eps=eps, min_voxels=min_voxels, merge_floating=merge_floating)
    return _pack(per_scene, fields.voxels.device)


def _pack(per_scene: list[YawBoxes], device) -> tuple[YawBoxes, Tensor]:
    centers = [b.center.to(device).float() for b in per_scene]
    scene_index = torch.cat([torch.full((c.shape[0],), i, dtype=torch.int64, device=device)
                             for i, c in enumerate(centers)]) if centers else torch.zeros(0, dtype=torch.int64,
                                                                                      device=device)
    if not centers:
        empty = torch.zeros(0, 3, device=device)
        return YawBoxes(empty, empty, torch.zeros(0, device=device)), scene_index
    return YawBoxes(torch.cat(centers), torch.cat([b.size.to(device).float() for b in per_scene]),
                    torch.cat([b.yaw.to(device).float() for b in per_scene])), scene_index


def canonical_boxes(boxes) -> YawBoxes:
    """Yaw boxes in the form DBSCAN boxes take: ``size_x >= size_y``, yaw in [-pi/2, pi/2)."""
    boxes = as_yaw_boxes(boxes)
    swap = boxes.size[:, 1] > boxes.size[:, 0]
    size = boxes.size.clone()
    size[swap, 0], size[swap, 1] = boxes.size[swap, 1], boxes.size[swap, 0]
    yaw = boxes.yaw + swap.to(boxes.yaw.dtype) * (torch.pi / 2)
    yaw = torch.remainder(yaw + torch.pi / 2, torch.pi) - torch.pi / 2
    return YawBoxes(boxes.center, size, yaw)


def assign_labels(pred_boxes: YawBoxes, pred_scene: Tensor, gt_boxes, gt_labels: Tensor, gt_scene: Tensor,
                  iou_threshold: float = 0.25) -> tuple[Tensor, Tensor]:
    """Labels of predicted boxes from GT boxes matched per scene (Hungarian on 3D IoU).

    Returns:
        ``(labels, gt_index)``: (O_pred,) int64 label of the matched GT object or -1 when unmatched,
        and (O_pred,) index of that GT object in the packed GT arrays or -1.
    """
    gt = as_yaw_boxes(gt_boxes)
    labels = torch.full_like(pred_scene, -1)
    gt_index = torch.full_like(pred_scene, -1)
    for scene in torch.unique(torch.cat([pred_scene, gt_scene])).tolist():
        pred_rows = torch.nonzero(pred_scene == scene)[:, 0]
        gt_rows = torch.nonzero(gt_scene.to(pred_scene.device) == scene)[:, 0]
        if len(pred_rows) == 0 or len(gt_rows) == 0:
            continue
        matched, _ = match_boxes(YawBoxes(*(t[pred_rows] for t in pred_boxes)),
                                 YawBoxes(*(t[gt_rows.to(t.device)] for t in gt)), iou_threshold)
        hit = matched >= 0
        gt_index[pred_rows[hit]] = gt_rows[matched[hit]]
        labels[pred_rows[hit]] = gt_labels.to(labels.device)[gt_rows[matched[hit]]]
    return labels, gt_index


def training_boxes(pred_boxes: YawBoxes, pred_scene: Tensor, gt_boxes, gt_labels: Tensor, gt_scene: Tensor,
                   iou_threshold: float = 0.25) -> tuple[YawBoxes, Tensor, Tensor, Tensor]:
    """The boxes a training step scores, with their labels: predicted boxes, or GT boxes where none matched.

    Predicted boxes are labelled by :func:`assign_labels` (-1: unmatched; such a box stays in its scene,
    compared with the others, but carries no loss). A scene in which no predicted box matches a GT
    box (early in training, or when the density misses every object) takes its GT boxes instead, in
    the canonical DBSCAN form (:func:`canonical_boxes`) and with their labels, and none of its
    predicted boxes, so that every scene contributes to the loss and no object appears twice in it.

    Returns:
        ``(boxes, scene_index, labels, predicted)``: the kept predicted boxes in their order, then the GT
        boxes of the scenes that fell back, in theirs; labels int64 (0, 1 or -1); ``predicted`` (O,) bool,
        True for the predicted boxes.
    """
    labels, _ = assign_labels(pred_boxes, pred_scene, gt_boxes, gt_labels, gt_scene, iou_threshold=iou_threshold)
    matched = pred_scene[labels >= 0]  # scenes with a matched predicted box
    keep = torch.isin(pred_scene, matched)
    device = pred_boxes.center.device
    fallback = ~torch.isin(gt_scene.to(device), matched)
    gt = canonical_boxes(gt_boxes)
    boxes = YawBoxes(*(torch.cat([p[keep], g.to(device)[fallback]]) for p, g in zip(pred_boxes, gt)))
    scene_index = torch.cat([pred_scene[keep], gt_scene.to(device)[fallback]])
    out_labels = torch.cat([labels[keep], gt_labels.to(device, torch.int64)[fallback]])
    predicted = torch.arange(out_labels.numel(), device=device) < int(keep.sum())
    return boxes, scene_index, out_labels, predicted


@dataclass(frozen=True)
class Detection:
    """Per-object outputs for a batch (same type in training and evaluation).

    Attributes:
        boxes: packed :class:`YawBoxes` of the O objects found.
        scene_index: (O,) scene of each object.
        logits: (O,) anomaly logits (positive = anomalous).
        num_tokens: (O,) occupied cells of each object volume.
        scene: the :class:`SceneOutput` of the scene model.
    """

    boxes: YawBoxes
    scene_index: Tensor
    logits: Tensor
    num_tokens: Tensor
    scene: SceneOutput

    @property
    def scores(self) -> Tensor:
        """(O,) anomaly probabilities."""
        return torch.sigmoid(self.logits)


DISTANCE_GROUPS = ("opacity", "F_v", "beta")  # columns of OddOneOutDetector.distance_inputs
#: Object-volume channels that ``view_colour`` adds (before the opacity): the views' RGB premultiplied by the
#: cell's visibility, and the visibility (:meth:`OddOneOutDetector.view_colour_volumes`).
VIEW_COLOUR_CHANNELS = 4


def standardize_per_scene(x: Tensor, scene_index: Tensor, eps: float = 1e-6) -> Tensor:
    """(O, F) -> (O, F): each column minus its scene's mean, over its scene's (biased) standard deviation + eps."""
    if x.shape[0] == 0:
        return x
    centred = x - scatter_mean(x, scene_index)[scene_index]
    return centred / (scatter_mean(centred ** 2, scene_index).sqrt()[scene_index] + eps)


class OddOneOutDetector(nn.Module):
    """Find the objects of each scene and score how much each differs from the others.

    Args:
        scene_model: a :class:`SceneModel` (e.g. trained in stage 1).
        variant: matcher variant, ``"A"``, ``"B"``, ``"C"`` or ``"full"`` (see :class:`AnomalyMatcher`).
        density_threshold: voxel opacity above which a voxel belongs to an object (boxes and tokens).
        roi_size: r, cells per axis of an object volume. roi_margin: metres added around each box.
        k, heads, blocks, dim: matcher settings (paper: 20, 8, 3).
        dbscan_eps: DBSCAN radius in voxels. min_voxels: smallest object kept.
        merge_floating: when > 0, a DBSCAN cluster whose lowest voxel is more than this many voxels above
            the scene's lowest one joins the nearest grounded cluster (within 2 voxels in xy): instances
            stand on the ground (:func:`~oddsparse.geometry.boxes.merge_floating_clusters`; not in the
            paper). 0 (default): off. Settable after loading; a box head is trained on the proposals it gives.
        box_head: add a :class:`~oddsparse.models.box_head.BoxHead` that refines the DBSCAN proposals
            and scores their objectness (trained on its own, see
            :func:`oddsparse.train.engine.train_box_head_on_cache`).
        box_head_resolution, box_head_channels, box_head_context: its RoI cells per axis, CNN width and
            context factor.
        box_head_inputs: what the box head reads of its RoI volumes: ``"all"`` (F_v, opacity, carved hull) or
            ``"geometry"`` (opacity and carved hull only; :class:`~oddsparse.models.box_head.BoxHead`).
        box_head_size_input: the box head also reads each proposal's size in voxels
            (:class:`~oddsparse.models.box_head.BoxHead` ``size_input``; not in the paper).
        objectness_threshold: proposals whose objectness probability is below this are dropped.
        box_nms_iou: when > 0, of the box head's refined boxes of a scene whose 3D IoU exceeds this only the one
            of highest objectness is kept (non-maximum suppression; for a head trained with fragment targets,
            :func:`~oddsparse.train.engine.proposal_targets` ``cover``, whose fragments grow to one object;
            not in the paper). 0 (default) or 1: off. Settable after loading.
        box_delta_scale: the box head's deltas (centre, log size, yaw) are multiplied by this before they move
            a proposal: 1 (default) as trained, 0 the DBSCAN boxes themselves (objectness still applies), in
            between a shrunk correction (not in the paper). The head learns its size corrections on the
            training categories, a category prior that misfits unseen ones (docs/RESULTS.md, sessions 9 and
            22). Settable after loading; the box head's own training is unaffected (its loss reads its deltas).
        token_features: what each occupied cell's token carries into the matcher: ``"volume"`` (F_v, the
            paper's object volume) or ``"all"`` (F_v, the distilled features beta and the opacity).
        matcher_contrast: the matcher's head also sees each object's descriptor minus the median of the
            other objects' (:class:`~oddsparse.models.matcher.AnomalyMatcher` ``contrast``).
        matcher_distance_input: the matcher's head also sees :meth:`distance_inputs`, each object's
            distance to the other objects of its scene (opacity, F_v, beta; standardised per scene): the
            parameter-free comparison of :func:`oddsparse.eval.baselines.distance_to_others`, stated
            to the matcher (not in the paper). Not allowed for variant A.
        matcher_difference_input: the matcher's head (its 3D CNN) also reads :meth:`difference_inputs`, where
            each object differs from the other objects of its scene, cell by cell (not in the paper). Not
            allowed for variant A.
        matcher_difference_messages: the matcher's attention passes each token the attended values minus its
            own (:class:`~oddsparse.models.matcher.AnomalyMatcher` ``difference_messages``; not in the paper).
            Not allowed for variant A.
        matcher_distance_anchor: the matcher's logit is the sum of :meth:`distance_inputs` plus a learned
            correction that starts at zero (the matcher's ``anchor``; not in the paper): an untrained
            matcher ranks each scene's objects as the distance does. Needs ``matcher_distance_input``.
        test_flips: at inference (matcher in eval mode) the anomaly logits are averaged over the volumes as
            given and ``test_flips`` more readings in which each object's box is turned by pi about z
            with probability 1/2 (fixed patterns that depend on each scene alone, :meth:`test_flip_turns`;
            with ``register_objects`` whole scenes turn), the training augmentation of
            :func:`~oddsparse.train.engine.random_box_flips`; a yaw box is only defined modulo pi.
            0 (default): one reading, as in the paper. Settable after loading (``detector.test_flips``).
        box_consensus: the estimated boxes of a scene of three or more agree on one size and one ground
            plane (:func:`~oddsparse.geometry.boxes.consensus_boxes`; not in the paper: the scene's
            instances are copies of one object). Settable after loading.
        register_objects: before scoring, each box is re-placed so that its object volume best matches
            its scene's reference object (:meth:`register_boxes`; not in the paper). Not allowed for
            variant A, which compares nothing. Settable after loading.
        register_yaw_offsets: yaw offsets (degrees) tried by the registration, besides quarter-turns.
        register_shifts: xy shifts (voxels) tried by the registration, on each axis.
        register_channels: what the registration compares: ``"all"`` channels of :meth:`object_volumes`
            or ``"geometry"`` (F_v and opacity, without beta: about 8x less to sample).
        register_resolution: cells per axis of the volumes the registration compares (0: ``roi_size``;
            half of it samples 8x fewer points).
        token_patch: p, object-volume cells per axis that one matcher token covers (not in the paper). The
            matcher reads ``roi_size / p`` cells per axis, each token carrying its ``p^3`` cells' channels
            (:func:`~oddsparse.models.matcher.patch_cells`: a patch embedding) and present when any of them
            is above ``density_threshold``; :meth:`distance_inputs` compare the volumes at ``roi_size``.
            So ``roi_size=16, token_patch=2`` gives 16^3 detail at the 8^3 tokens' cost. 1 (default): a
            token per cell, as in the paper.
        view_colour: the object volumes also hold the input views' colour at every cell
            (:meth:`view_colour_volumes`: each view weighted by its transmittance through the scene model's
            density), a group ``"colour"`` of :meth:`volume_parts` that the distance and difference inputs compare
            too (not in the paper: the shading that shows bumps and cracks is in the views, not in F_v's
            voxels). Tokens carry it with ``token_features="all"``. Needs the views in the scene output
            (:class:`SceneOutput` ``views``, set by :class:`SceneModel`).
    """

    def __init__(self, scene_model: SceneModel, *, variant: Literal["A", "B", "C", "full"] = "full",
                 density_threshold: float = 0.2, roi_size: int = 8, roi_margin: float = 0.02, k: int = 20,
                 heads: int = 8, blocks: int = 3, dim: int = 128, dbscan_eps: float = 1.5, min_voxels: int = 4,
                 box_head: bool = False, box_head_resolution: int = 16, box_head_channels: int = 32,
                 box_head_context: float = 1.5, objectness_threshold: float = 0.5,
                 token_features: Literal["volume", "all"] = "volume", matcher_contrast: bool = False,
                 matcher_distance_input: bool = False, matcher_distance_anchor: bool = False,
                 matcher_difference_input: bool = False, matcher_difference_messages: bool = False,
                 test_flips: int = 0, box_consensus: bool = False,
                 register_objects: bool = False, register_yaw_offsets: tuple = (-30, -20, -10, 0, 10, 20, 30),
                 register_shifts: tuple = (0,), register_channels: Literal["all", "geometry"] = "all",
                 register_resolution: int = 0, merge_floating: float = 0.0, token_patch: int = 1,
                 box_head_inputs: Literal["all", "geometry"] = "all", box_delta_scale: float = 1.0,
                 box_head_size_input: bool = False, box_nms_iou: float = 0.0, view_colour: bool = False):
        super().__init__()
        self.view_colour = bool(view_colour)
        self.distance_groups = DISTANCE_GROUPS + (("colour",) if self.view_colour else ())
        if not box_delta_scale >= 0:
            raise ValueError(f"OddOneOutDetector: box_delta_scale must be >= 0, got {box_delta_scale}")
        self.box_delta_scale = float(box_delta_scale)
        if token_patch < 1 or roi_size % token_patch:
            raise ValueError(f"OddOneOutDetector: token_patch must be >= 1 and divide roi_size={roi_size}, "
                             f"got {token_patch}")
        self.token_patch = int(token_patch)
        if register_objects and variant == "A":
            raise ValueError("OddOneOutDetector: register_objects compares objects, variant 'A' must not")
        self.box_consensus, self.register_objects = bool(box_consensus), bool(register_objects)
        self.register_yaw_offsets = tuple(float(a) for a in register_yaw_offsets)
        self.register_shifts = tuple(float(v) for v in register_shifts)
        if register_channels not in ("all", "geometry"):
            raise ValueError(f"OddOneOutDetector: register_channels must be 'all' or 'geometry', got {register_channels!r}")
        self.register_channels = register_channels
        if register_resolution < 0:
            raise ValueError(f"OddOneOutDetector: register_resolution must be >= 0, got {register_resolution}")
        self.register_resolution = int(register_resolution)
        if test_flips < 0:
            raise ValueError(f"OddOneOutDetector: test_flips must be >= 0, got {test_flips}")
        self.test_flips = int(test_flips)
        self.scene_model = scene_model
        self.density_threshold, self.roi_size, self.roi_margin = density_threshold, roi_size, roi_margin
        self.dbscan_eps, self.min_voxels = dbscan_eps, min_voxels
        if merge_floating < 0:
            raise ValueError(f"OddOneOutDetector: merge_floating must be >= 0, got {merge_floating}")
        self.merge_floating = float(merge_floating)
        self.objectness_threshold = objectness_threshold
        if not 0 <= box_nms_iou <= 1:
            raise ValueError(f"OddOneOutDetector: box_nms_iou must be in [0, 1], got {box_nms_iou}")
        self.box_nms_iou = float(box_nms_iou)
        feature_dim = scene_model.fields.feature_dim
        if token_features not in ("volume", "all"):
            raise ValueError(f"OddOneOutDetector: token_features must be 'volume' or 'all', got {token_features!r}")
        self.token_features = token_features
        if matcher_distance_input and variant == "A":
            raise ValueError("OddOneOutDetector: matcher_distance_input compares objects, variant 'A' must not")
        self.matcher_distance_input = matcher_distance_input
        if matcher_difference_input and variant == "A":
            raise ValueError("OddOneOutDetector: matcher_difference_input compares objects, variant 'A' must not")
        self.matcher_difference_input = bool(matcher_difference_input)
        if matcher_distance_anchor and not matcher_distance_input:
            raise ValueError("OddOneOutDetector: matcher_distance_anchor scores the distance inputs; "
                             "set matcher_distance_input=True")
        token_channels = scene_model.volume_channels + (
            feature_dim + 1 + (VIEW_COLOUR_CHANNELS if self.view_colour else 0) if token_features == "all" else 0)
        cells = token_patch ** 3
        self.matcher = AnomalyMatcher(token_channels * cells, beta_channels=feature_dim * cells, dim=dim, heads=heads,
                                      blocks=blocks, k=k, variant=variant, resolution=roi_size // token_patch,
                                      contrast=matcher_contrast,
                                      extra_features=len(self.distance_groups) if matcher_distance_input else 0,
                                      volume_inputs=len(self.distance_groups) if matcher_difference_input else 0,
                                      anchor=matcher_distance_anchor,
                                      difference_messages=matcher_difference_messages)
        self.box_head = BoxHead(scene_model.volume_channels + 2, resolution=box_head_resolution,
                                channels=box_head_channels, context=box_head_context,
                                inputs=box_head_inputs, size_input=box_head_size_input,
                                size_unit=scene_model.grid.voxel_size) if box_head else None

    @property
    def variant(self) -> str:
        return self.matcher.variant

    def propose_boxes(self, scene: SceneOutput) -> tuple[YawBoxes, Tensor]:
        """``(boxes, scene_index)`` estimated from the scene model's density (:func:`estimate_boxes`).

        Only voxels of the carved hull count: carving gives the dilation shell (added for rendering)
        agreement 0, and it would inflate every box by a voxel per side.
        """
        carved = scene.occupancy.feats[:, 0] > 0
        return estimate_boxes(scene.fields, self.density_threshold, carved=carved, eps=self.dbscan_eps,
                              min_voxels=self.min_voxels, merge_floating=self.merge_floating)

    def proposal_volumes(self, scene: SceneOutput, boxes: YawBoxes, scene_index: Tensor) -> Tensor:
        """(O, C_v + 2, r_b, r_b, r_b) box-head input: F_v, opacity and the carved-hull indicator, sampled on
        each box grown by the head's context (so that it sees past a box that is too small)."""
        if self.box_head is None:
            raise ValueError("OddOneOutDetector.proposal_volumes: this detector has no box head (box_head=False)")
        carved = (scene.occupancy.feats[:, :1] > 0).to(scene.volume.feats.dtype)
        stacked = scene.volume.replace(feats=torch.cat([scene.volume.feats, voxel_opacity(scene.fields)[:, None],
                                                        carved], dim=1))
        head = self.box_head
        return roi_sample(stacked, context_boxes(boxes, head.context, head.margin), scene_index,
                          out_size=head.resolution)

    def refine_boxes(self, scene: SceneOutput, boxes: YawBoxes, scene_index: Tensor,
                     keep_all: bool = False, return_deltas: bool = False):
        """Box-head refinement of proposals: ``(refined canonical boxes, scene_index, objectness probabilities)``,
        and with ``return_deltas`` the (O, 7) deltas that moved those boxes (the head's times ``box_delta_scale``;
        zeros without a head).

        Proposals whose objectness is below ``objectness_threshold`` are dropped unless ``keep_all``.
        Not differentiable (boxes are a selection, like DBSCAN's).
        """
        if self.box_head is None or boxes.center.shape[0] == 0:
            out = boxes, scene_index, torch.ones_like(boxes.yaw)
            return (*out, boxes.center.new_zeros(boxes.center.shape[0], 7)) if return_deltas else out
        with torch.no_grad():
            volumes = self.proposal_volumes(scene, boxes, scene_index).detach()
        return self.refine_from_volumes(boxes, scene_index, volumes, keep_all=keep_all, return_deltas=return_deltas)

    @torch.no_grad()
    def refine_from_volumes(self, boxes: YawBoxes, scene_index: Tensor, volumes: Tensor,
                            keep_all: bool = False, return_deltas: bool = False, chunk: int = 0):
        """:meth:`refine_boxes` from the proposals' box-head inputs ``volumes`` (:meth:`proposal_volumes`) instead
        of the scene, e.g. cached ones (:func:`oddsparse.train.engine.cache_proposals`): same returns.
        ``chunk``: most proposals per box-head call (0: all at once), bounding the memory of large caches."""
        if self.box_head is None:
            raise ValueError("OddOneOutDetector.refine_from_volumes: this detector has no box head (box_head=False)")
        parameter = next(self.box_head.parameters())
        step = chunk if chunk > 0 else max(len(volumes), 1)
        outputs = [self.box_head(volumes[i:i + step].to(parameter.device, parameter.dtype),
                                 boxes.size[i:i + step].to(parameter.device, parameter.dtype))
                   for i in range(0, len(volumes), step)]
        deltas, objectness = (torch.cat(part).to(boxes.center.device, boxes.center.dtype) for part in zip(*outputs))
        if self.box_delta_scale != 1.0:
            deltas = deltas * self.box_delta_scale
        refined = canonical_boxes(apply_box_deltas(boxes, deltas))
        probability = torch.sigmoid(objectness)
        if not keep_all:
            keep = self.kept_proposals(probability)
            refined = YawBoxes(*(t[keep] for t in refined))
            scene_index, probability, deltas = scene_index[keep], probability[keep], deltas[keep]
        return (refined, scene_index, probability, deltas) if return_deltas else (refined, scene_index, probability)

    def kept_proposals(self, probability: Tensor) -> Tensor:
        """(O,) bool: the proposals :meth:`refine_boxes` keeps, those of objectness ``probability`` at or
        above ``objectness_threshold``."""
        return probability >= self.objectness_threshold

    def find_boxes(self, scene: SceneOutput, return_proposals: bool = False):
        """``(boxes, scene_index)`` of the objects: DBSCAN proposals (:meth:`propose_boxes`), refined and
        filtered by the box head when the detector has one (:meth:`refine_boxes`), made to agree on one
        size and ground plane per scene with ``box_consensus``. ``return_proposals``: also the proposals,
        their scene index and their box-head input volumes (detached; None without a head or proposals),
        ``(boxes, scene_index, proposals, proposal_scene, volumes)``."""
        proposals, proposal_scene = self.propose_boxes(scene)
        volumes = None
        if self.box_head is not None and proposals.center.shape[0] > 0:
            with torch.no_grad():
                volumes = self.proposal_volumes(scene, proposals, proposal_scene).detach()
        boxes, scene_index = self.boxes_from_proposals(proposals, proposal_scene, volumes)
        return (boxes, scene_index, proposals, proposal_scene, volumes) if return_proposals else (boxes, scene_index)

    def boxes_from_proposals(self, boxes: YawBoxes, scene_index: Tensor, volumes: Tensor | None,
                             chunk: int = 0) -> tuple[YawBoxes, Tensor]:
        """What :meth:`find_boxes` does after the DBSCAN proposals: refined and filtered by the box head from their
        ``volumes`` (:meth:`proposal_volumes`; ignored without a head or proposals), suppressed with
        ``box_nms_iou``, then ``box_consensus``. Also for cached proposals
        (:func:`oddsparse.train.engine.cached_final_boxes`)."""
        if self.box_head is not None and boxes.center.shape[0] > 0:
            boxes, scene_index, probability = self.refine_from_volumes(boxes, scene_index, volumes, chunk=chunk)
            if 0 < self.box_nms_iou < 1:
                keep = nms_boxes(boxes, probability, scene_index, self.box_nms_iou)
                boxes, scene_index = YawBoxes(*(t[keep] for t in boxes)), scene_index[keep]
        if self.box_consensus:
            boxes = consensus_boxes(boxes, scene_index)
        return boxes, scene_index

    #: Most candidate boxes :meth:`register_boxes` samples in one call (bounds its memory).
    REGISTRATION_CHUNK = 512

    def register_boxes(self, scene: SceneOutput, boxes: YawBoxes, scene_index: Tensor, *,
                       return_references: bool = False) -> YawBoxes | tuple[YawBoxes, Tensor]:
        """Boxes re-placed so that each object's volume reads its object in its scene's reference frame.

        A box found from a footprint fixes the object's yaw only roughly, and not at all modulo a
        quarter-turn when the footprint is nearly square; instances compared cell by cell should be read
        in one frame. Per scene of three or more boxes (others are returned unchanged), without gradient:

        1. every box's object volume (:meth:`object_volumes`) is read at its four quarter-turns
           (:func:`~oddsparse.geometry.boxes.registration_candidates`);
        2. the reference is the medoid: the object whose volume has the smallest sum, over the other
           objects, of their L2 distance to it at their best quarter-turn;
        3. each other object takes the candidate placement (``register_yaw_offsets`` degrees plus
           quarter-turns, ``register_shifts`` voxels on x and y) whose volume is nearest (L2 over
           ``register_channels``) to the reference's volume. The reference keeps its box.

        An odd object is registered like the others: registration removes differences of placement,
        not of shape. Returns boxes in the input order (an odd quarter-turn swaps a box's x and y size)
        and, with ``return_references``, an (O,) bool marking each registered scene's reference object.
        """
        references = torch.zeros(boxes.center.shape[0], dtype=torch.bool, device=boxes.center.device)
        if not self.register_objects or boxes.center.shape[0] == 0:
            return (boxes, references) if return_references else boxes
        offsets = [0.0] + [math.radians(a) for a in self.register_yaw_offsets if a != 0]
        voxel = scene.volume.grid.voxel_size
        shifts = [0.0] + [v * voxel for v in self.register_shifts if v != 0]
        per_box = 4 * len(offsets) * len(shifts) ** 2  # candidate q * per_box / 4: quarter-turn q of the box itself
        turn_rows = torch.arange(4) * (per_box // 4)
        center, size, yaw = (t.clone() for t in boxes)
        with torch.no_grad():
            field = self._registration_field(scene)  # built once: every sampling below reads it
            for s in torch.unique(scene_index).tolist():
                rows = torch.nonzero(scene_index == s)[:, 0]
                n = rows.numel()
                if n < 3:
                    continue
                candidates = registration_candidates(YawBoxes(*(t[rows] for t in boxes)), offsets, shifts)
                index = torch.full((per_box * n,), s, dtype=scene_index.dtype, device=scene_index.device)
                own_turns = (torch.arange(n)[:, None] * per_box + turn_rows[None]).flatten().to(rows.device)
                turns = self._registration_volumes(field, YawBoxes(*(t[own_turns] for t in candidates)),
                                                   index[:4 * n]).flatten(1).view(n, 4, -1)
                distance = torch.cdist(turns.flatten(0, 1), turns[:, 0]).view(n, 4, n)
                reference = int(distance.min(dim=1).values.sum(dim=0).argmin())
                target = turns[reference, 0]
                best = []  # nearest candidate of each object, a few objects at a time (memory)
                chunk = max(1, self.REGISTRATION_CHUNK // per_box)
                for first in range(0, n, chunk):
                    part = YawBoxes(*(t[first * per_box:(first + chunk) * per_box] for t in candidates))
                    volumes = self._registration_volumes(field, part, index[:part.yaw.shape[0]]).flatten(1)
                    best.append((volumes - target).norm(dim=1).view(-1, per_box).argmin(dim=1))
                best = torch.cat(best)
                best[reference] = 0
                references[rows[reference]] = True
                pick = torch.arange(n, device=best.device) * per_box + best
                center[rows], size[rows], yaw[rows] = candidates.center[pick], candidates.size[pick], candidates.yaw[pick]
        registered = YawBoxes(center, size, yaw)
        return (registered, references) if return_references else registered

    def _stacked_field(self, scene: SceneOutput, beta: bool = True) -> SparseVoxels:
        """F_v, beta (unless ``beta=False``) and opacity packed on the scene's voxels: what object volumes sample."""
        parts = [scene.volume.feats] + ([scene.fields.features] if beta else [])
        return scene.volume.replace(feats=torch.cat([*parts, voxel_opacity(scene.fields)[:, None]], dim=1))

    def _registration_field(self, scene: SceneOutput) -> SparseVoxels:
        """The field :meth:`register_boxes` compares: ``register_channels`` of :meth:`_stacked_field`."""
        return self._stacked_field(scene, beta=self.register_channels == "all")

    def _registration_volumes(self, field: SparseVoxels, boxes: YawBoxes, scene_index: Tensor) -> Tensor:
        """The volumes :meth:`register_boxes` compares: ``field`` (:meth:`_registration_field`) sampled on
        ``boxes`` at ``register_resolution`` cells per axis (0: ``roi_size``)."""
        return roi_sample(field, boxes, scene_index, out_size=self.register_resolution or self.roi_size,
                          margin=self.roi_margin)

    def object_volumes(self, scene: SceneOutput, boxes: YawBoxes, scene_index: Tensor) -> Tensor:
        """(O, C_v + C_beta (+ 4) + 1, r, r, r) object volumes of ``boxes``: F_v, beta, with ``view_colour`` the
        views' colour (:meth:`view_colour_volumes`), and opacity, box-aligned.

        This is what the matcher sees (:meth:`score_volumes`); kept separate so that training code can
        cache the volumes of a frozen scene model (:func:`oddsparse.train.engine.cache_object_volumes`).
        :meth:`volume_parts` splits them into their channel groups.
        """
        volumes = roi_sample(self._stacked_field(scene), boxes, scene_index, out_size=self.roi_size,
                             margin=self.roi_margin)
        if not self.view_colour:
            return volumes
        colour = self.view_colour_volumes(scene, boxes, scene_index).to(volumes.dtype)
        return torch.cat([volumes[:, :-1], colour, volumes[:, -1:]], dim=1)

    def view_colour_volumes(self, scene: SceneOutput, boxes: YawBoxes, scene_index: Tensor) -> Tensor:
        """(O, 4, r, r, r): the input views' colour at the object volumes' cells, as ``view_colour`` adds it.

        Every cell reads the views of its scene (:func:`~oddsparse.renderers.raymarch.roi_view_samples`), each
        weighted by its transmittance towards the cell through the scene model's density (detached: an input,
        not a path for the density's training); channels: the weighted mean RGB in [0, 1] times the cell's
        visibility, and the visibility (the mean transmittance over the views, 0 to 1), so a cell no view sees
        reads 0 in all four.
        """
        if scene.views is None:
            raise ValueError("OddOneOutDetector: view_colour needs the input views in the scene output "
                             "(SceneOutput.views; SceneModel sets them)")
        images, K, world_to_cam = scene.views
        boxes = as_yaw_boxes(boxes)
        size = self.roi_size
        dtype = scene.fields.density.dtype
        out = scene.fields.density.new_zeros(boxes.center.shape[0], VIEW_COLOUR_CHANNELS, size, size, size)
        density = scene.fields.voxels.replace(feats=scene.fields.density.detach()[:, None])
        with torch.no_grad():
            for b in torch.unique(scene_index).tolist():
                rows = torch.nonzero(scene_index == b)[:, 0]
                maps = images_to_float(images[b], dtype)  # (M, 3, H, W)
                values, support = roi_view_samples(
                    maps, K[b].to(dtype), world_to_cam[b].to(dtype), tuple(images.shape[2:4]), density,
                    YawBoxes(boxes.center[rows], boxes.size[rows], boxes.yaw[rows]), out_size=size,
                    margin=self.roi_margin, scene=b)
                visibility = support / maps.shape[0]
                out[rows] = torch.cat([values * visibility, visibility], dim=1)
        return out

    def volume_slices(self, num_channels: int) -> dict[str, slice]:
        """Channel slices of the groups of :meth:`object_volumes` (``num_channels`` channels in all): ``"F_v"``
        (C_v), ``"beta"`` (C_beta), with ``view_colour`` ``"colour"`` (4) and ``"opacity"`` (1, the last)."""
        channels = self.scene_model.volume_channels
        if self.view_colour:
            colour = num_channels - 1 - VIEW_COLOUR_CHANNELS
            return {"F_v": slice(0, channels), "beta": slice(channels, colour),
                    "colour": slice(colour, num_channels - 1), "opacity": slice(num_channels - 1, num_channels)}
        return {"F_v": slice(0, channels), "beta": slice(channels, num_channels - 1),
                "opacity": slice(num_channels - 1, num_channels)}

    def volume_parts(self, volumes: Tensor) -> dict[str, Tensor]:
        """The channel groups of :meth:`object_volumes` (:meth:`volume_slices`): ``"F_v"`` (O, C_v, r, r, r),
        ``"beta"`` (O, C_beta, r, r, r), ``"colour"`` (O, 4, r, r, r, with ``view_colour``) and ``"opacity"``
        (O, 1, r, r, r), views of ``volumes``."""
        return {name: volumes[:, part] for name, part in self.volume_slices(volumes.shape[1]).items()}

    def score_volumes(self, volumes: Tensor, scene_index: Tensor) -> tuple[Tensor, Tensor]:
        """Anomaly logits (O,) and token counts (O,) of object volumes from :meth:`object_volumes`.

        With ``test_flips > 0`` and the matcher in eval mode, the logits are the mean over the given
        reading and ``test_flips`` readings with half-turned volumes (:meth:`test_flip_turns`).
        """
        logits, num_tokens = self._score_once(volumes, scene_index)
        if self.test_flips > 0 and not self.matcher.training:
            total, turned = logits, volumes.flip(2, 3)
            for turn in self.test_flip_turns(volumes, scene_index).to(volumes.device):
                flipped = torch.where(turn[:, None, None, None, None], turned, volumes)
                total = total + self._score_once(flipped, scene_index)[0]
            logits = total / (self.test_flips + 1)
        return logits, num_tokens

    def test_flip_turns(self, volumes: Tensor, scene_index: Tensor) -> Tensor:
        """(test_flips, O) bool: which object volumes each test-time reading of :meth:`score_volumes` half-turns.

        A scene's readings depend on that scene alone: not on the scenes packed with it, nor on the order of its
        objects. Its objects are ranked by the sum of their volume (which a half-turn keeps; ties keep the given
        order), and the object of rank r is turned in reading c where ``flip_patterns(r + 1, test_flips)[c, r]``
        is True (a column does not depend on how many are drawn). With ``register_objects`` the volumes of a scene
        share its reference object's frame, so every object of every scene turns as one, by column 0: the
        frames stay shared, as the matcher warm-up's augmentation turns registered scenes whole.
        """
        count, num_objects = self.test_flips, volumes.shape[0]
        if num_objects == 0:
            return torch.zeros(count, 0, dtype=torch.bool)
        if self.register_objects:
            return self.flip_patterns(1, count).expand(count, num_objects)
        scene_index = scene_index.detach().cpu()
        key = volumes.detach().flatten(1).double().sum(1).cpu()
        order = torch.argsort(key, stable=True)
        order = order[torch.argsort(scene_index[order], stable=True)]  # by scene, then by key
        sorted_scene = scene_index[order]
        rank = torch.empty_like(order)
        rank[order] = torch.arange(num_objects) - torch.searchsorted(sorted_scene, sorted_scene)
        return self.flip_patterns(int(rank.max()) + 1, count)[:, rank]

    @staticmethod
    def flip_patterns(num_objects: int, count: int, seed: int = 0) -> Tensor:
        """(count, num_objects) bool, each entry True with probability 1/2 (seeded, fixed); drawn object by
        object, so column j is the same for every ``num_objects`` > j."""
        generator = torch.Generator().manual_seed(seed)
        return (torch.rand(num_objects, count, generator=generator) < 0.5).T

    def _score_once(self, volumes: Tensor, scene_index: Tensor) -> tuple[Tensor, Tensor]:
        parts = self.volume_parts(volumes)
        feats = volumes if self.token_features == "all" else parts["F_v"]
        p = self.token_patch
        occupancy = parts["opacity"].detach()
        if p > 1:
            occupancy = F.max_pool3d(occupancy, p)  # a token is present when any of its cells is
        tokens = build_object_tokens(patch_cells(feats, p), occupancy[:, 0], scene_index,
                                     threshold=self.density_threshold,
                                     beta=patch_cells(parts["beta"], p) if self.matcher.uses_correspondences else None)
        num_tokens = torch.bincount(tokens.object_index, minlength=volumes.shape[0])
        extra = self.distance_inputs(volumes, scene_index) if self.matcher_distance_input else None
        difference = self.difference_inputs(volumes, scene_index) if self.matcher_difference_input else None
        return self.matcher(tokens, extra, difference), num_tokens

    def difference_inputs(self, volumes: Tensor, scene_index: Tensor) -> Tensor:
        """(O, G, r / p, r / p, r / p) where each object differs from the other objects of its scene, per cell.

        Channels follow ``distance_groups`` (:data:`DISTANCE_GROUPS`, and ``"colour"`` with ``view_colour``):
        :func:`~oddsparse.eval.baselines.difference_to_others` of the
        groups of :meth:`object_volumes` (per cell, the median over the other objects of the squared
        difference, up to a half-turn of the box), averaged over each token's ``p^3`` cells (``token_patch``),
        divided by its scene's mean over objects and cells (+ 1e-6) and ``log1p``: 0 where an object agrees
        with the others, large where it stands out. Computed without gradient, like :meth:`distance_inputs`.
        """
        from oddsparse.eval.baselines import difference_to_others

        groups = self.volume_slices(volumes.shape[1])
        with torch.no_grad():
            difference = difference_to_others(volumes, scene_index, [groups[name] for name in self.distance_groups])
            if self.token_patch > 1:
                difference = F.avg_pool3d(difference, self.token_patch)
            if difference.shape[0] == 0:
                return difference
            scale = scatter_mean(difference.mean(dim=(2, 3, 4)), scene_index)[scene_index]  # (O, groups)
            return torch.log1p(difference / (scale[:, :, None, None, None] + 1e-6))

    def distance_inputs(self, volumes: Tensor, scene_index: Tensor) -> Tensor:
        """(O, G) each object's distance to the other objects of its scene, per channel group.

        Columns follow ``distance_groups`` (:data:`DISTANCE_GROUPS`: opacity, F_v, beta of :meth:`object_volumes`,
        and the colour with ``view_colour``): the median
        L2 distance (:func:`~oddsparse.eval.baselines.distance_to_others`, up to a half-turn of the box),
        ``log1p``, then standardised within each scene (zero mean, unit variance; a scene of one object,
        or of equal distances, gives zeros). Computed without gradient: an input, like the density
        threshold, not a path for the scene model's training.
        """
        from oddsparse.eval.baselines import distance_to_others

        groups = self.volume_parts(volumes)
        with torch.no_grad():
            columns = torch.stack([torch.log1p(distance_to_others(groups[name], scene_index))
                                   for name in self.distance_groups], dim=1)
            return standardize_per_scene(columns, scene_index)

    def score_boxes(self, scene: SceneOutput, boxes: YawBoxes, scene_index: Tensor) -> tuple[Tensor, Tensor]:
        """Anomaly logits (O,) and token counts (O,) of given boxes on the scene model's output (registered
        first with ``register_objects``, :meth:`register_boxes`)."""
        if boxes.center.shape[0] == 0:
            empty = scene.volume.feats.new_zeros(0)
            return empty, torch.zeros(0, dtype=torch.int64, device=empty.device)
        boxes = self.register_boxes(scene, boxes, scene_index)
        return self.score_volumes(self.object_volumes(scene, boxes, scene_index), scene_index)

    def forward(self, images: Tensor, K: Tensor, world_to_cam: Tensor, *, carve_masks: Tensor | None = None,
                boxes: tuple[YawBoxes, Tensor] | None = None) -> Detection:
        """Args:
            images: (B, M, H, W, 3). K: (B, M, 3, 3). world_to_cam: (B, M, 4, 4).
            carve_masks: optional GT foreground for carving (training only).
            boxes: optional ``(boxes, scene_index)`` to score instead of the estimated ones (training only).
        """
        scene = self.scene_model(images, K, world_to_cam, carve_masks=carve_masks)
        if boxes is None:
            boxes = self.find_boxes(scene)
        pred_boxes, scene_index = boxes
        logits, num_tokens = self.score_boxes(scene, pred_boxes, scene_index)
        return Detection(boxes=pred_boxes, scene_index=scene_index, logits=logits, num_tokens=num_tokens, scene=scene)


def build_detector(scene_kwargs: dict, detector_kwargs: dict) -> OddOneOutDetector:
    """A detector from the plain keyword dicts stored in checkpoints (``grid`` as a dict of VoxelGrid fields)."""
    from oddsparse.geometry.grid import VoxelGrid

    scene_kwargs = dict(scene_kwargs)
    if isinstance(scene_kwargs.get("grid"), dict):
        scene_kwargs["grid"] = VoxelGrid(**scene_kwargs["grid"])
    return OddOneOutDetector(SceneModel(**scene_kwargs), **detector_kwargs)


def load_detector(path, map_location="cpu") -> tuple[OddOneOutDetector, dict]:
    """Load a detector checkpoint (weights only; never unpickles code).

    The checkpoint is a dict with ``scene_kwargs``, ``detector_kwargs`` and ``model`` (state dict),
    as written by the recipes. Returns ``(detector in eval mode, checkpoint dict)``.
    """
    from oddsparse.utils.checkpoint import CheckpointError, load_checkpoint

    checkpoint = load_checkpoint(path, map_location=map_location)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: holds a {type(checkpoint).__name__}, not an oddsparse detector checkpoint "
                              f"(a dict with scene_kwargs, detector_kwargs and model)")
    for key in ("scene_kwargs", "detector_kwargs", "model"):
        if key not in checkpoint:
            raise CheckpointError(f"{path}: field '{key}' missing: not an oddsparse detector checkpoint")
        if not isinstance(checkpoint[key], dict):
            raise CheckpointError(f"{path}: field '{key}' is a {type(checkpoint[key]).__name__}, not a dict")
    try:
        detector = build_detector(checkpoint["scene_kwargs"], checkpoint["detector_kwargs"])
    except (TypeError, ValueError) as error:  # an unknown or invalid keyword: a checkpoint of other code
        raise CheckpointError(f"{path}: fields 'scene_kwargs' / 'detector_kwargs' do not build a detector of this "
                              f"oddsparse: {error}") from error
    try:
        detector.load_state_dict(checkpoint["model"])
    except RuntimeError as error:  # missing, unexpected or mis-shaped weights
        reason = " ".join(str(error).split())
        raise CheckpointError(f"{path}: field 'model' does not fit the detector its kwargs build: {reason[:400]}") \
            from error
    return detector.eval(), checkpoint
