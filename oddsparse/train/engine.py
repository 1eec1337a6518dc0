"""Training helpers that the recipes compose: batches, teacher targets, the two stage losses, the loop.

Everything here takes keyword arguments; the recipes (``recipes/train_*.py``) own the configs.

* :func:`prepare_batch`: a collated :class:`~oddsparse.data.SceneDataset` batch -> :class:`PreparedBatch`
  (tensors on the device: input views, union-of-object masks, target views, GT yaw boxes packed).
* :class:`TeacherTargets`: teacher features of the target views, from a per-scene on-disk
  :class:`~oddsparse.models.teachers.TeacherCache` (all V stored views of a scene computed once at the
  training image size, PCA-reduced), resized to the feature render size.
* :func:`stage1_loss` / :func:`stage2_loss` and the :class:`Stage1Objective` / :class:`Stage2Objective`
  modules wrapping them (a module whose ``forward`` returns the loss is what DistributedDataParallel wraps).
* :func:`batch_indices`: the data order, a pure function of ``(seed, step, rank)`` so that resuming
  from a checkpoint replays exactly the batches an uninterrupted run would have seen.
* :func:`train_stage`: the loop (tqdm, TensorBoard, atomic periodic checkpoints, resume, DDP).
"""
from __future__ import annotations

import math
import os
import time
import warnings
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oddsparse.geometry.boxes import YawBoxes, as_yaw_boxes, box_intersection_3d
from oddsparse.models.box_head import box_deltas
from oddsparse.models.detector import OddOneOutDetector, assign_labels, canonical_boxes, training_boxes
from oddsparse.models.scene_model import SceneModel, SceneOutput, foreground_loss, images_to_float
from oddsparse.models.teachers import PCA, DenseSiftTeacher, Teacher, TeacherCache, fit_teacher_pca
from oddsparse.train.losses import masked_feature_distance, reconstruction_loss, scene_ranking_loss
from oddsparse.utils.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

__all__ = ["DistInfo", "init_distributed", "close_distributed", "PreparedBatch", "prepare_batch", "union_masks",
           "TeacherTargets", "build_teacher_targets", "reconstruction_terms", "foreground_pretrain_loss",
           "ForegroundObjective", "stage1_loss", "stage2_loss",
           "Stage1Objective", "Stage2Objective", "random_box_flips", "ObjectVolumeCache", "cache_object_volumes",
           "train_matcher_on_cache", "ProposalCache", "cache_proposals", "proposal_targets", "flip_proposals",
           "box_head_loss", "box_head_cache_loss",
           "cached_final_boxes", "box_recall_on_cache",
           "train_box_head_on_cache",
           "batch_indices", "load_batch", "train_stage", "ensure_synthetic_dataset"]


# ---------------------------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class DistInfo:
    """Process group facts: ``rank`` of ``world_size`` processes, the ``device`` of this one."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``, ...).

    Without those variables this is a single process. The backend is NCCL on CUDA and gloo on CPU.
    Args:
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``.
    """
    if device not in ("auto", "cpu", "cuda"):  # e.g. "cuda:0" would otherwise train on the CPU without a word
        raise ValueError(f"init_distributed: device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dev = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def close_distributed() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _barrier(dist: DistInfo) -> None:
    if dist.distributed:
        torch.distributed.barrier()


# ---------------------------------------------------------------------------------------------- data
def ensure_synthetic_dataset(root: str | os.PathLike, *, family: str, scenes: int, seed: int,
                             objects: tuple[int, int], views: int, size: int, workers: int = 1,
                             dist: DistInfo | None = None, progress: bool = True,
                             min_anomaly_pixels: int = 0, background: str = "gradient",
                             categories=None) -> Path:
    """Generate the embedded synthetic dataset into ``root`` unless it is complete (resumable).

    In a process group rank 0 generates while the others wait.
    """
    root = Path(root)
    dist = dist or DistInfo()
    if dist.is_main and not (root / "splits.json").is_file():
        from oddsparse.data.synth import generate_dataset

        generate_dataset(root, family, scenes=scenes, seed=seed, objects=tuple(objects), views=views, size=size,
                         workers=workers, progress=progress, min_anomaly_pixels=min_anomaly_pixels,
                         background=background, categories=categories)
    _barrier(dist)
    return root


def batch_indices(step: int, *, num_items: int, batch_size: int, seed: int, rank: int = 0,
                  world_size: int = 1) -> tuple[list[int], list[int]]:
    """Dataset items of this rank's share of the global batch at ``step``, and their epochs.

    The global stream of samples is the concatenation of per-epoch permutations, permutation ``e``
    drawn from ``numpy.random.default_rng([seed, e])``; step ``s`` takes samples
    ``[s * B * W, (s + 1) * B * W)`` of it (B per rank, W ranks) and rank ``r`` the ``r``-th block of B.
    A pure function of its arguments: resuming at ``step`` replays the same data.

    Returns:
        ``(indices, epochs)``: B dataset indices and the epoch each sample belongs to (the epoch
        also seeds the dataset's view draws).
    """
    if num_items < 1:
        raise ValueError("batch_indices: the dataset is empty")
    start = (step * world_size + rank) * batch_size
    indices, epochs = [], []
    for position in range(start, start + batch_size):
        epoch, offset = divmod(position, num_items)
        order = np.random.default_rng([int(seed), int(epoch)]).permutation(num_items)
        indices.append(int(order[offset]))
        epochs.append(int(epoch))
    return indices, epochs


def load_batch(dataset, indices: Sequence[int], epochs: Sequence[int]) -> dict:
    """Read items ``indices`` of a :class:`~oddsparse.data.SceneDataset` (view draws of ``epochs``) and collate."""
    from oddsparse.data import collate_scenes

    items = []
    for index, epoch in zip(indices, epochs):
        dataset.set_epoch(epoch)
        items.append(dataset[index])
    return collate_scenes(items)


def training_batches(dataset, *, start: int, steps: int, batch_size: int, seed: int, rank: int = 0,
                     world_size: int = 1, prefetch: int = 0) -> Iterator[dict]:
    """The collated batches (:func:`load_batch`) of steps ``start, ..., steps - 1`` (:func:`batch_indices`).

    With ``prefetch > 0`` one background thread reads up to ``prefetch`` batches ahead of the one being
    trained on (decoding images and masks while a GPU computes); the batches are the same, in the same order
    (they depend only on ``(seed, step)``), and only that thread touches ``dataset``. An error reading a batch
    is raised when that batch is reached. On 2 CPU cores it does not pay: the thread competes with the step
    for the cores and the GIL (``benchmarks/bench_loading.py``: 1.01x in stage 0, 0.81x in stage 1 of the
    default preset), so it is off by default.
    """
    def read(step: int) -> dict:
        indices, epochs = batch_indices(step, num_items=len(dataset), batch_size=batch_size, seed=seed, rank=rank,
                                        world_size=world_size)
        return load_batch(dataset, indices, epochs)

    if prefetch <= 0:
        for step in range(start, steps):
            yield read(step)
        return
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oddsparse-prefetch")
    pending = deque(pool.submit(read, step) for step in range(start, min(steps, start + prefetch + 1)))
    following = start + len(pending)
    try:
        while pending:
            batch = pending.popleft().result()
            if following < steps:
                pending.append(pool.submit(read, following))
                following += 1
            yield batch
    finally:  # also when the consumer stops early: drop what was not started, wait for the read in flight
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)


def union_masks(masks: Tensor, object_batch_index: Tensor, batch_size: int) -> Tensor:
    """Packed object masks (O, M, H, W) -> (B, M, H, W) bool union of the objects of each scene."""
    union = torch.zeros(batch_size, *masks.shape[1:], dtype=torch.bool, device=masks.device)
    for scene in range(batch_size):
        rows = object_batch_index == scene
        if rows.any():
            union[scene] = masks[rows].any(dim=0)
    return union


@dataclass(frozen=True)
class PreparedBatch:
    """Tensors of a batch of B scenes, M input views and T target views, on one device.

    Attributes:
        images: (B, M, H, W, 3) uint8 input views. K: (B, M, 3, 3). world_to_cam: (B, M, 4, 4).
        masks: (B, M, H, W) bool union of the GT object masks of the input views (foreground head
            target; carving during training only).
        target_images: (B, T, H, W, 3) uint8. target_masks: (B, T, H, W) bool object union.
        target_K: (B, T, 3, 3). target_world_to_cam: (B, T, 4, 4). target_view_ids: (B, T) stored view ids.
        target_depth: (B, T, H, W) float32 GT z-depth of the target views (``+inf`` on background).
        gt_boxes: packed :class:`YawBoxes` (O,). gt_labels: (O,) int64. gt_scene: (O,) int64 scene of each box.
        scene_names: B scene folder names.
    """

    images: Tensor
    K: Tensor
    world_to_cam: Tensor
    masks: Tensor
    target_images: Tensor | None
    target_masks: Tensor | None
    target_K: Tensor | None
    target_world_to_cam: Tensor | None
    target_view_ids: Tensor | None
    gt_boxes: YawBoxes
    gt_labels: Tensor
    gt_scene: Tensor
    scene_names: list
    target_depth: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[2:4])


def prepare_batch(batch: dict, device: torch.device | str) -> PreparedBatch:
    """A :func:`~oddsparse.data.collate_scenes` batch of dataset items -> :class:`PreparedBatch` on ``device``."""
    inputs, targets = batch["inputs"], batch.get("targets")
    if not bool(inputs.view_valid.all()):
        raise ValueError("prepare_batch: all scenes of a batch need the same number of input views "
                         "(set SceneDataset.num_input_views)")
    if targets is not None and not bool(targets.view_valid.all()):  # a padded view would be rendered and compared
        raise ValueError("prepare_batch: all scenes of a batch need the same number of target views "
                         "(set SceneDataset.num_target_views)")
    batch_size = inputs.batch_size
    inputs = inputs.to(device)
    yaw = as_yaw_boxes(inputs.boxes)
    out = dict(images=inputs.images, K=inputs.K, world_to_cam=inputs.world_to_cam,
               masks=union_masks(inputs.masks, inputs.object_batch_index, batch_size),
               target_images=None, target_masks=None, target_K=None, target_world_to_cam=None, target_view_ids=None,
               gt_boxes=YawBoxes(yaw.center.float(), yaw.size.float(), yaw.yaw.float()), gt_labels=inputs.labels,
               gt_scene=inputs.object_batch_index, scene_names=[scene.name for scene in inputs.scenes])
    if targets is not None:
        targets = targets.to(device)
        out.update(target_images=targets.images, target_K=targets.K, target_world_to_cam=targets.world_to_cam,
                   target_masks=union_masks(targets.masks, targets.object_batch_index, batch_size),
                   target_view_ids=targets.view_ids, target_depth=targets.depth)
    return PreparedBatch(**out)


# ---------------------------------------------------------------------------------------------- teacher
class TeacherTargets:
    """Teacher features of target views, cached per scene on disk and resized to the feature render size.

    On first use of a scene all of its V stored views are read at ``image_size``, passed through the
    teacher and the PCA and stored by :class:`~oddsparse.models.teachers.TeacherCache`; later calls
    read the file (a few recent scenes are kept in memory).

    Args:
        cache: the :class:`TeacherCache`.
        scene_folders: scene name -> scene folder.
        image_size: (H, W) the training image size (the cache key's resolution).
        feature_size: (h, w) the resolution features are rendered at (32 x 32 in the paper).
        memory_items: scenes kept in memory.
    """

    def __init__(self, cache: TeacherCache, scene_folders: dict[str, Path], image_size: tuple[int, int],
                 feature_size: tuple[int, int] = (32, 32), memory_items: int = 64):
        self.cache, self.scene_folders = cache, dict(scene_folders)
        self.image_size, self.feature_size = tuple(image_size), tuple(feature_size)
        self.memory_items = memory_items
        self._memory: OrderedDict[str, Tensor] = OrderedDict()

    def scene_features(self, name: str) -> Tensor:
        """(V, C, h, w) features of every stored view of scene ``name`` at ``feature_size``."""
        if name in self._memory:
            self._memory.move_to_end(name)
            return self._memory[name]
        if name not in self.scene_folders:
            raise KeyError(f"TeacherTargets: unknown scene {name!r}")
        if (name, self.image_size) in self.cache:
            features = self._cached(name)
        else:
            from oddsparse.data import read_scene

            scene = read_scene(self.scene_folders[name], image_size=self.image_size)
            images = images_to_float(scene.images)  # (V, 3, H, W)
            features = self.cache.get(name, images)
        features = F.interpolate(features, size=self.feature_size, mode="bilinear", align_corners=False)
        self._memory[name] = features
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)
        return features

    def _cached(self, name: str) -> Tensor:
        array = np.load(self.cache.path(name, self.image_size), allow_pickle=False)
        return torch.from_numpy(array.astype(np.float32))

    def __call__(self, batch: PreparedBatch) -> Tensor:
        """(B*T, C, h, w) teacher features of the batch's target views (scene-major, like the renders)."""
        if batch.target_view_ids is None:
            raise ValueError("TeacherTargets: the batch has no target views")
        maps = [self.scene_features(name)[batch.target_view_ids[b].cpu()] for b, name in enumerate(batch.scene_names)]
        return torch.cat(maps).to(batch.images.device)


def _sift_stride(image_size: tuple[int, int], feature_size: tuple[int, int]) -> int:
    """A dense-SIFT stride giving about ``feature_size`` maps (even, 2..12, dividing the image size)."""
    for stride in (8, 4, 2, 6, 10, 12):
        if image_size[0] % stride == 0 and image_size[1] % stride == 0 and image_size[0] // stride >= feature_size[0]:
            return stride
    for stride in (2, 4, 6, 8, 10, 12):
        if image_size[0] % stride == 0 and image_size[1] % stride == 0:
            return stride
    raise ValueError(f"no dense-SIFT stride divides the image size {image_size}; use a multiple of 2")


def build_teacher_targets(*, kind: str, run_dir: str | os.PathLike, cache_dir: str | os.PathLike,
                          train_folders: Sequence[Path], scene_folders: dict[str, Path], image_size: tuple[int, int],
                          feature_size: tuple[int, int] = (32, 32), feature_dim: int = 128, pca_scenes: int = 4,
                          dinov2_path: str | None = None, device: torch.device | str = "cpu",
                          dist: DistInfo | None = None, seed: int = 0) -> tuple[TeacherTargets, dict]:
    """The teacher, its PCA (fitted on ``pca_scenes`` training scenes, saved as ``run_dir/teacher_pca.npz``,
    reloaded when present) and the per-scene cache.

    Args:
        kind: ``"sift"`` (weight-free dense SIFT, default) or ``"dinov2"`` (needs ``dinov2_path``).
    Returns:
        ``(targets, teacher_info)``; ``teacher_info`` is the plain dict stored in checkpoints.
    """
    dist = dist or DistInfo()
    if kind == "sift":
        teacher: Teacher = DenseSiftTeacher(stride=_sift_stride(tuple(image_size), tuple(feature_size)))
    elif kind == "dinov2":
        from oddsparse.models.teachers import DinoV2Teacher

        if not dinov2_path:
            raise ValueError("teacher 'dinov2' needs a local checkpoint path (dinov2_path)")
        teacher = DinoV2Teacher(dinov2_path)
    else:
        raise ValueError(f"teacher kind must be 'sift' or 'dinov2', got {kind!r}")
    teacher = teacher.to(device)
    pca_path = Path(run_dir) / "teacher_pca.npz"
    if dist.is_main and not pca_path.is_file():
        from oddsparse.data import read_scene

        chosen = list(train_folders)[:max(1, pca_scenes)]
        batches = (images_to_float(read_scene(folder, image_size=tuple(image_size)).images).to(device)
                   for folder in chosen)
        pca = fit_teacher_pca(teacher, batches, out_dim=min(feature_dim, teacher.out_channels),
                              generator=torch.Generator().manual_seed(seed))
        pca.save(pca_path)
    _barrier(dist)
    pca = PCA.load(pca_path)
    cache = TeacherCache(cache_dir, teacher, pca)
    info = {"kind": kind, "teacher_id": teacher.teacher_id, "pca": str(pca_path), "dinov2_path": dinov2_path or "",
            "feature_size": list(feature_size)}
    return TeacherTargets(cache, scene_folders, tuple(image_size), tuple(feature_size)), info


# ---------------------------------------------------------------------------------------------- losses
def _resize_images(images: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, C, H, W) float -> (N, C, h, w), area average when shrinking."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=tuple(size), mode="area")


def target_depth(batch: PreparedBatch, render_size: tuple[int, int]) -> dict[str, Tensor]:
    """GT depth of the target views at ``render_size``: ``gt_depth`` (B*T, h, w) and ``depth_valid`` (B*T, h, w).

    A render pixel is valid when every image pixel it covers is an object pixel with a finite depth;
    its depth is then the area average of those pixels' depths.
    """
    depth = batch.target_depth.flatten(0, 1)[:, None]  # (B*T, 1, H, W)
    on_object = batch.target_masks.flatten(0, 1)[:, None] & torch.isfinite(depth)
    coverage = _resize_images(on_object.float(), render_size)[:, 0]
    summed = _resize_images(torch.where(on_object, depth, torch.zeros_like(depth)), render_size)[:, 0]
    valid = coverage >= 1.0 - 1e-6
    gt_depth = torch.where(valid, summed / coverage.clamp(min=1e-6), torch.zeros_like(summed))
    return {"gt_depth": gt_depth, "depth_valid": valid}


def reconstruction_terms(scene_model: SceneModel, output: SceneOutput, batch: PreparedBatch,
                         teacher_features: Tensor | None, *, render_size: tuple[int, int],
                         feature_size: tuple[int, int] = (32, 32), num_samples: int = 64,
                         lambda_sigma: float = 1.0, lambda_f: float = 1.0,
                         lambda_d: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """L_r of the target views: colour and opacity rendered at ``render_size``, features at ``feature_size``.

    The image target is the GT RGB multiplied by the GT object mask (objects on black): the floor is
    outside the carved set, so the fields cannot and should not reproduce it, and the renderer's
    background is black. The mask target is the union of the GT object masks (area-averaged when the
    render is smaller). Features are rendered with detached density (the paper) and compared to the
    teacher with the cosine distance; the terms also hold ``feature_object``, that distance on the
    object pixels alone (logged, not in the loss). With ``lambda_d > 0`` the rendered depth is also compared with
    the GT depth (L1, metres) on render pixels that lie entirely on objects (area-averaged mask 1; the
    GT depth area-averaged over them). ``L_r`` sums over each scene's T target views and averages over
    the B scenes.

    Args:
        teacher_features: (B*T, C, h, w) at ``feature_size``, or None to skip distillation.
    """
    if batch.target_images is None:
        raise ValueError("reconstruction_terms: the batch has no target views")
    image_size = batch.image_size
    rendered = scene_model.render(output.fields, batch.target_K, batch.target_world_to_cam, image_size,
                                  tuple(render_size), num_samples=num_samples, render_features=False)
    mask = _resize_images(batch.target_masks.flatten(0, 1)[:, None].float(), render_size)[:, 0]  # (B*T, h, w)
    # object pixels on black (B*T, 3, h, w); with area averaging an edge pixel keeps its object fraction.
    object_rgb = _resize_images(images_to_float(batch.target_images).flatten(0, 1)
                                * batch.target_masks.flatten(0, 1)[:, None].float(), render_size)
    pred_feat = gt_feat = None
    if teacher_features is not None:
        features = scene_model.render(output.fields, batch.target_K, batch.target_world_to_cam, image_size,
                                      tuple(feature_size), num_samples=num_samples, render_rgb=False)
        pred_feat, gt_feat = features["features"], teacher_features
    depth_kwargs = {}
    if lambda_d > 0:
        if batch.target_depth is None:
            raise ValueError("reconstruction_terms: lambda_d > 0 needs the GT depth of the target views")
        depth_kwargs = dict(pred_depth=rendered["depth"], lambda_d=lambda_d, **target_depth(batch, render_size))
    total, terms = reconstruction_loss(rendered["rgb"], object_rgb, rendered["opacity"], mask, pred_feat, gt_feat,
                                       lambda_sigma=lambda_sigma, lambda_f=lambda_f, feature_dim=1, **depth_kwargs)
    if pred_feat is not None:  # logged only: the feature term on object pixels (half covered or more)
        on_object = _resize_images(batch.target_masks.flatten(0, 1)[:, None].float(), feature_size)[:, 0] >= 0.5
        terms["feature_object"] = masked_feature_distance(pred_feat, gt_feat, on_object, dim=1)
    scale = 1.0 / batch.batch_size
    return total * scale, {name: value * scale for name, value in terms.items()}


def stage1_loss(scene_model: SceneModel, batch: PreparedBatch, teacher_features: Tensor | None, *,
                render_size: tuple[int, int], feature_size: tuple[int, int] = (32, 32), num_samples: int = 64,
                use_distillation: bool = True, carve_from_gt: bool = True, lambda_sigma: float = 1.0,
                lambda_f: float = 1.0, lambda_d: float = 0.0,
                foreground_weight: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Stage 1: ``foreground_weight * BCE(foreground) + L_r`` (see :func:`reconstruction_terms`).

    Args:
        carve_from_gt: carve with the GT object masks instead of the predicted foreground (training only).
        use_distillation: include the feature term (variants C and full); needs ``teacher_features``.
    Returns:
        ``(loss, terms)`` with detached terms ``foreground``, ``image``, ``mask``, (``feature`` and, logged
        only, ``feature_object``: the cosine distance on object pixels), ``voxels``.
    """
    output = scene_model(batch.images, batch.K, batch.world_to_cam, carve_masks=batch.masks if carve_from_gt else None)
    fg = foreground_loss(output.foreground_logits, batch.masks)
    recon, terms = reconstruction_terms(scene_model, output, batch, teacher_features if use_distillation else None,
                                        render_size=render_size, feature_size=feature_size, num_samples=num_samples,
                                        lambda_sigma=lambda_sigma, lambda_f=lambda_f, lambda_d=lambda_d)
    terms = dict(terms, foreground=fg.detach(), voxels=torch.tensor(float(output.occupancy.num_voxels)))
    loss = foreground_weight * fg + recon
    return loss, dict(terms, loss=loss.detach())


def stage2_loss(detector: OddOneOutDetector, batch: PreparedBatch, teacher_features: Tensor | None, *,
                lambda_p: float = 1.0, render_size: tuple[int, int], feature_size: tuple[int, int] = (32, 32),
                num_samples: int = 64, use_distillation: bool = True, carve_from_gt: bool = False,
                match_iou: float = 0.25, lambda_sigma: float = 1.0, lambda_f: float = 1.0, lambda_d: float = 0.0,
                foreground_weight: float = 1.0, flip_boxes: bool = True, lambda_box: float = 0.0,
                box_match_iou: float = 0.2, lambda_rank: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Stage 2: ``BCE(anomaly logits) + lambda_p * (L_r + foreground BCE) [+ lambda_box * box-head loss]
    [+ lambda_rank * within-scene ranking of the logits]`` (:func:`~oddsparse.train.losses.scene_ranking_loss`, on
    the same boxes and labels as the BCE).

    Boxes are estimated from the predicted density (as at test time) and labelled by matching them
    to the GT boxes of their scene (:func:`~oddsparse.models.detector.assign_labels`, 3D IoU above
    ``match_iou``); unmatched predicted boxes are scored but ignored by the loss. A scene where no
    predicted box matches (early in training, or when the density misses every object) takes its GT
    boxes instead of its predicted ones, in the canonical DBSCAN form
    (:func:`~oddsparse.models.detector.training_boxes`), so that every scene contributes to the
    matcher's loss; the matcher still compares those boxes only with the other boxes of the same scene.

    With ``flip_boxes`` each box is turned by pi about z with probability 1/2 (:func:`random_box_flips`):
    the same box, but its object volume is read in the other of the two orientations that box
    estimation cannot tell apart (a yaw box is only defined modulo pi).

    With ``lambda_box > 0`` (and a box head) the box head trains too, on this step's DBSCAN proposals as
    stage 1b trains it on cached ones (:func:`box_head_loss`, targets by :func:`proposal_targets` at
    ``box_match_iou``, half turns at random with ``flip_boxes``), from their volumes detached: the head
    follows the scene model it reads, which stage 2 moves, and its loss does not reach the scene model. The
    boxes the matcher scores are those of the head before this step's update, exactly
    :meth:`~OddOneOutDetector.find_boxes`'s. ``lambda_box = 0`` (default): the head stays as stage 1b left it.

    Returns:
        ``(loss, terms)`` with detached ``bce``, ``matched`` (fraction of used boxes that were
        predicted, not fallbacks), ``boxes``, the reconstruction terms and, with ``lambda_box``, ``box_head``.
    """
    scene_model = detector.scene_model
    output = scene_model(batch.images, batch.K, batch.world_to_cam, carve_masks=batch.masks if carve_from_gt else None)
    extra_terms = {}  # the optional terms, logged
    if lambda_box > 0 and detector.box_head is not None:
        pred_boxes, pred_scene, box_loss = _stage2_box_head_loss(detector, output, batch, box_match_iou, flip_boxes)
        extra_terms["box_head"] = box_loss.detach()
    else:
        pred_boxes, pred_scene = detector.find_boxes(output)  # as at test time
    device = output.volume.feats.device
    boxes, scene_index, all_labels, predicted = training_boxes(
        YawBoxes(*(t.to(device) for t in pred_boxes)), pred_scene.to(device), batch.gt_boxes,
        batch.gt_labels.to(device), batch.gt_scene.to(device), iou_threshold=match_iou)
    if flip_boxes:
        boxes = random_box_flips(boxes)
    logits, num_tokens = detector.score_boxes(output, boxes, scene_index)
    used = all_labels >= 0
    if bool(used.any()):
        bce = F.binary_cross_entropy_with_logits(logits[used], all_labels[used].float())
    else:  # cannot happen (every scene has GT boxes), kept for safety
        bce = logits.sum() * 0.0
    fg = foreground_loss(output.foreground_logits, batch.masks)
    recon, terms = reconstruction_terms(scene_model, output, batch, teacher_features if use_distillation else None,
                                        render_size=render_size, feature_size=feature_size, num_samples=num_samples,
                                        lambda_sigma=lambda_sigma, lambda_f=lambda_f, lambda_d=lambda_d)
    loss = bce + lambda_p * (recon + foreground_weight * fg)
    if "box_head" in extra_terms:
        loss = loss + lambda_box * box_loss
    if lambda_rank > 0:
        rank = scene_ranking_loss(logits, all_labels, scene_index)
        loss = loss + lambda_rank * rank
        extra_terms["rank"] = rank.detach()
    num_used = int(used.sum())
    terms = dict(terms, **extra_terms, bce=bce.detach(), foreground=fg.detach(), loss=loss.detach(),
                 boxes=torch.tensor(float(pred_boxes.center.shape[0])),
                 matched=torch.tensor(float((used & predicted).sum()) / max(1, num_used)))
    return loss, terms


def _stage2_box_head_loss(detector: OddOneOutDetector, output: SceneOutput, batch: PreparedBatch,
                          match_iou: float, flip: bool) -> tuple[YawBoxes, Tensor, Tensor]:
    """``(boxes, scene_index, loss)``: :meth:`~OddOneOutDetector.find_boxes` of ``output``, and the box head's
    :func:`box_head_loss` on the same proposals (volumes detached; with ``flip``, half turns at random) for stage 2."""
    boxes, scene_index, proposals, proposal_scene, volumes = detector.find_boxes(output, return_proposals=True)
    parameter = next(detector.box_head.parameters())
    if volumes is None:  # no proposal
        return boxes, scene_index, parameter.sum() * 0.0
    targets, matched = proposal_targets(proposals, proposal_scene, batch.gt_boxes, batch.gt_scene, match_iou=match_iou)
    turn = (torch.rand(matched.shape) < 0.5 if flip else torch.zeros(matched.shape, dtype=torch.bool)).to(matched.device)
    turned, turned_proposals = flip_proposals(volumes.to(parameter.dtype), proposals, turn)
    deltas, objectness = detector.box_head(turned.to(parameter.device), turned_proposals.size.to(parameter))
    loss, _ = box_head_loss(deltas, objectness, turned_proposals, targets, matched)
    return boxes, scene_index, loss


def foreground_pretrain_loss(scene_model: SceneModel, batch: PreparedBatch, teacher_features: Tensor | None = None,
                             ) -> tuple[Tensor, dict[str, Tensor]]:
    """Stage 0: the foreground BCE of the input views alone (2D encoder, foreground head and refiner).

    The visual hull carved from the predicted foreground is what every later step sees at test time
    (object volumes, boxes); segmentation is a 2D task whose step costs a fraction of a stage-1 step
    (no carving, 3D network or rendering), so the encoder and foreground head can be trained on many
    more views before stage 1. ``teacher_features`` is ignored (the signature of the stage objectives).
    """
    _, logits = scene_model.encode(batch.images)
    loss = foreground_loss(logits, batch.masks)
    return loss, {"foreground": loss.detach(), "loss": loss.detach()}


class ForegroundObjective(nn.Module):
    """``forward(batch, teacher_features) -> (loss, terms)`` of :func:`foreground_pretrain_loss` (stage 0)."""

    def __init__(self, scene_model: SceneModel):
        super().__init__()
        self.scene_model = scene_model

    def forward(self, batch: PreparedBatch, teacher_features: Tensor | None = None):
        return foreground_pretrain_loss(self.scene_model, batch, teacher_features)


class Stage1Objective(nn.Module):
    """``forward(batch, teacher_features) -> (loss, terms)`` of :func:`stage1_loss` (the module DDP wraps)."""

    def __init__(self, scene_model: SceneModel, **loss_kwargs):
        super().__init__()
        self.scene_model = scene_model
        self.loss_kwargs = loss_kwargs

    def forward(self, batch: PreparedBatch, teacher_features: Tensor | None):
        return stage1_loss(self.scene_model, batch, teacher_features, **self.loss_kwargs)


class Stage2Objective(nn.Module):
    """``forward(batch, teacher_features) -> (loss, terms)`` of :func:`stage2_loss`."""

    def __init__(self, detector: OddOneOutDetector, **loss_kwargs):
        super().__init__()
        self.detector = detector
        self.loss_kwargs = loss_kwargs

    def forward(self, batch: PreparedBatch, teacher_features: Tensor | None):
        return stage2_loss(self.detector, batch, teacher_features, **self.loss_kwargs)


def random_box_flips(boxes: YawBoxes, generator: torch.Generator | None = None) -> YawBoxes:
    """The same boxes, each turned by pi about z with probability 1/2 (training augmentation).

    A yaw box is the same box after a half turn, but :func:`~oddsparse.geometry.roi.roi_sample` then
    reads its object volume with the x and y cell axes reversed; box estimation fixes the yaw only
    modulo pi, so the matcher must be indifferent to the two readings.
    """
    flip = torch.rand(boxes.yaw.shape, generator=generator, device="cpu").to(boxes.yaw.device) < 0.5
    return YawBoxes(boxes.center, boxes.size, boxes.yaw + flip.to(boxes.yaw.dtype) * math.pi)


# ---------------------------------------------------------------------------------------------- matcher warm-up
@dataclass(frozen=True)
class ObjectVolumeCache:
    """Object volumes of a frozen scene model, packed over every (scene, view draw).

    Attributes:
        volumes: (O, C_v + C_beta + 1, r, r, r) :meth:`OddOneOutDetector.object_volumes` of the cached boxes
            (GT boxes in canonical form, or predicted ones), stored in ``dtype``.
        labels: (O,) int64, -1 for a predicted box that matched no GT object (no loss).
        group: (O,) int64 item (scene and view draw) of each object, in [0, G).
    """

    volumes: Tensor
    labels: Tensor
    group: Tensor

    @property
    def num_groups(self) -> int:
        return int(self.group.max()) + 1 if self.group.numel() else 0

    def select(self, items: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
        """Volumes (float32), labels and 0-based scene index of the objects of ``items`` (packed in that order)."""
        rows, scene = [], []
        for new, item in enumerate(items):
            found = torch.nonzero(self.group == int(item))[:, 0]
            rows.append(found)
            scene.append(torch.full((found.numel(),), new, dtype=torch.int64))
        rows = torch.cat(rows)
        return self.volumes[rows].float(), self.labels[rows], torch.cat(scene)


@torch.no_grad()
def cache_object_volumes(detector: OddOneOutDetector, dataset, *, draws: int = 1, device: torch.device | str = "cpu",
                         carve_from_gt: bool = False, dtype: torch.dtype = torch.float16, max_scenes: int = 0,
                         boxes: str = "gt", match_iou: float = 0.25, progress: bool = True) -> ObjectVolumeCache:
    """Run the (frozen) scene model once per scene and view draw; keep its object volumes.

    The volumes are those the matcher would see at test time (carving from the predicted foreground
    unless ``carve_from_gt``), so the matcher can be trained on them for many epochs at the cost of
    one scene-model forward per scene (:func:`train_matcher_on_cache`). ``boxes``: ``"gt"``, the GT
    boxes (canonical form); ``"predicted"``, the detector's own boxes (:meth:`OddOneOutDetector.find_boxes`,
    as at test time and in stage 2), labelled by :func:`~oddsparse.models.detector.assign_labels`
    (IoU above ``match_iou``) with -1 for the unmatched ones, which stay in their scene (the matcher
    compares them) but carry no loss; a scene where no predicted box matches is cached with its GT boxes
    instead, as :func:`stage2_loss` scores it (:func:`~oddsparse.models.detector.training_boxes`). With the detector's
    ``register_objects`` the boxes are registered first (:meth:`OddOneOutDetector.register_boxes`), as
    :meth:`OddOneOutDetector.score_boxes` does at test time.
    Memory: O x (C_v + C_beta + 1) x r^3 values (about 150 kB per object in float16 at r = 8, so
    about 1 GB per 1000 scenes of 6 objects); ``max_scenes > 0`` caches only the first scenes.
    """
    from tqdm.auto import tqdm

    if boxes not in ("gt", "predicted"):
        raise ValueError(f"cache_object_volumes: boxes must be 'gt' or 'predicted', got {boxes!r}")
    was_training = detector.training
    detector.eval()
    volumes, labels, group = [], [], []
    num_scenes = min(len(dataset), max_scenes) if max_scenes > 0 else len(dataset)
    total = draws * num_scenes
    bar = tqdm(total=total, desc=f"object volumes ({boxes} boxes)", unit="scene", disable=not progress,
               dynamic_ncols=True)
    item = 0
    for draw in range(draws):
        for index in range(num_scenes):
            batch = prepare_batch(load_batch(dataset, [index], [draw]), device)
            output = detector.scene_model(batch.images, batch.K, batch.world_to_cam,
                                          carve_masks=batch.masks if carve_from_gt else None)
            if boxes == "predicted":
                found, found_scene = detector.find_boxes(output)
                scene_boxes, scene_index, scene_labels, _ = training_boxes(
                    found, found_scene, batch.gt_boxes, batch.gt_labels, batch.gt_scene, iou_threshold=match_iou)
            else:
                scene_boxes, scene_index, scene_labels = canonical_boxes(batch.gt_boxes), batch.gt_scene, batch.gt_labels
            scene_boxes = detector.register_boxes(output, scene_boxes, scene_index)  # as score_boxes does
            volumes.append(detector.object_volumes(output, scene_boxes, scene_index).to("cpu", dtype))
            labels.append(scene_labels.to("cpu"))
            group.append(torch.full((scene_labels.numel(),), item, dtype=torch.int64))
            item += 1
            bar.update(1)
    bar.close()
    detector.train(was_training)
    return ObjectVolumeCache(torch.cat(volumes), torch.cat(labels), torch.cat(group))


def train_matcher_on_cache(detector: OddOneOutDetector, cache: ObjectVolumeCache, *, steps: int, batch_size: int = 8,
                           lr: float = 5e-4, seed: int = 0, flip: bool = True, grad_clip: float | None = 1.0,
                           progress: bool = True, rank_weight: float = 0.0) -> list[float]:
    """Train the matcher alone (BCE, plus ``rank_weight`` times :func:`~oddsparse.train.losses.scene_ranking_loss`)
    on cached object volumes of a frozen scene model.

    Each step draws ``batch_size`` cached scenes (a permutation per epoch, from ``seed``) and, with
    ``flip``, reads each object volume turned by pi about z with probability 1/2 (the same
    augmentation as :func:`random_box_flips`: ``volume.flip(2, 3)`` is the half-turned box's volume);
    with the detector's ``register_objects`` the volumes of a scene share one frame, so a whole scene is
    turned or not. Objects labelled -1 (unmatched predicted boxes) are scored with their scene but left out of the loss.
    Only ``detector.matcher`` is updated. Returns the per-step losses.
    """
    from tqdm.auto import tqdm

    device = next(detector.matcher.parameters()).device
    optimizer = torch.optim.Adam(detector.matcher.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    losses = []
    detector.matcher.train()
    bar = tqdm(total=steps, desc="matcher warm-up", unit="step", disable=not progress, dynamic_ncols=True)
    for _ in range(steps):
        if len(order) < batch_size:
            order += torch.randperm(cache.num_groups, generator=generator).tolist()
        items, order = order[:batch_size], order[batch_size:]
        volumes, labels, scene = cache.select(items)
        if flip:
            if detector.register_objects:  # registered volumes share their scene's frame: turn whole scenes
                turn = (torch.rand(int(scene.max()) + 1, generator=generator) < 0.5)[scene]
            else:
                turn = torch.rand(volumes.shape[0], generator=generator) < 0.5
            volumes = torch.where(turn[:, None, None, None, None], volumes.flip(2, 3), volumes)
        logits, _ = detector.score_volumes(volumes.to(device), scene.to(device))
        labels = labels.to(device)
        used = labels >= 0  # unmatched predicted boxes are compared with the others but carry no loss
        loss = F.binary_cross_entropy_with_logits(logits[used], labels[used].float())
        if rank_weight > 0:
            loss = loss + rank_weight * scene_ranking_loss(logits, labels, scene.to(device))
        losses.append(_optimizer_step(loss, optimizer, detector.matcher, grad_clip))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        bar.update(1)
    bar.close()
    return losses


def _optimizer_step(loss: Tensor, optimizer: torch.optim.Optimizer, module: nn.Module,
                    grad_clip: float | None) -> float:
    """Backward, optional gradient-norm clip of ``module``'s parameters, optimizer step; returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
    optimizer.step()
    return float(loss.detach())


# ---------------------------------------------------------------------------------------------- box head
@dataclass(frozen=True)
class ProposalCache:
    """DBSCAN proposals of a frozen scene model with their box-head inputs and targets, packed.

    Attributes:
        volumes: (P, C_v + 2, r_b, r_b, r_b) :meth:`OddOneOutDetector.proposal_volumes`, stored in ``dtype``.
        proposals: (P, 7) proposal boxes ``(center, size, yaw)``.
        targets: (P, 7) the GT box (canonical form) matched to each proposal (the proposal itself where unmatched).
        matched: (P,) bool, whether a GT box was matched (IoU above the cache's threshold).
        scene: (P,) int64 dataset index of each proposal's scene (``None``: not recorded).
        gt: (G, 7) every GT box (canonical form) of the cached scenes, matched or not, also of a scene without
            proposals (``None``: not recorded); what :func:`box_recall_on_cache` scores final boxes against.
        gt_scene: (G,) int64 dataset index of each GT box's scene.
        item: (P,) int64 the item (one view draw of one scene: what one :meth:`OddOneOutDetector.find_boxes`
            call sees) of each proposal; ``None``: one item per scene (a cache of one draw).
        gt_item: (G,) int64 the item of each GT box.
    """

    volumes: Tensor
    proposals: Tensor
    targets: Tensor
    matched: Tensor
    scene: Tensor | None = None
    gt: Tensor | None = None
    gt_scene: Tensor | None = None
    item: Tensor | None = None
    gt_item: Tensor | None = None

    def __len__(self) -> int:
        return int(self.matched.numel())

    def rows(self, rows: Tensor, scenes: Tensor | None = None) -> "ProposalCache":
        """The cache restricted to ``rows`` (indices or a bool mask); GT boxes are kept for ``scenes`` (dataset
        indices; default: the scenes whose proposals are kept), all of them where the cache has no scene index."""
        scene = None if self.scene is None else self.scene[rows]
        item = None if self.item is None else self.item[rows]
        gt, gt_scene, gt_item = self.gt, self.gt_scene, self.gt_item
        if gt is not None and gt_scene is not None and scene is not None:
            keep = torch.isin(gt_scene, scene if scenes is None else scenes)
            gt, gt_scene = gt[keep], gt_scene[keep]
            gt_item = None if gt_item is None else gt_item[keep]
        return ProposalCache(self.volumes[rows], self.proposals[rows], self.targets[rows], self.matched[rows],
                             scene, gt, gt_scene, item, gt_item)

    def split_scenes(self, fraction: float, seed: int = 0,
                     groups: Sequence | None = None) -> tuple["ProposalCache", "ProposalCache"]:
        """``(kept, held_out)``: the proposals of a random ``fraction`` of the scenes held out (at least one scene
        where there are two; none where there is one), whole scenes on each side (their proposals are not independent).

        ``groups``: a label per dataset scene index (e.g. its category); a random ``fraction`` of the labels of the
        cached scenes is held out instead, with every scene of each (at least one label where there are two), so
        that the held-out side measures what a test split of other categories would.
        """
        if self.scene is None:
            raise ValueError("ProposalCache.split_scenes: the cache has no scene index (scene=None)")
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"ProposalCache.split_scenes: fraction must be in [0, 1), got {fraction}")
        # every cached scene, also one whose GT boxes got no proposal (its objects count as missed on its side)
        scenes = torch.unique(self.scene if self.gt_scene is None else torch.cat([self.scene, self.gt_scene]))
        if groups is None:
            units = scenes  # one unit per scene
            unit_of_scene = torch.arange(len(scenes))
        else:
            if int(scenes.max()) >= len(groups):
                raise ValueError(f"ProposalCache.split_scenes: groups has {len(groups)} labels, but the cache holds "
                                 f"scene index {int(scenes.max())}")
            labels = sorted({groups[i] for i in scenes.tolist()})
            units = torch.arange(len(labels))
            unit_of_scene = torch.tensor([labels.index(groups[i]) for i in scenes.tolist()])
        count = min(max(round(fraction * len(units)), 1 if fraction > 0 else 0), len(units) - 1)
        order = torch.randperm(len(units), generator=torch.Generator().manual_seed(seed))
        is_held = torch.isin(unit_of_scene, order[:count])
        held = torch.isin(self.scene, scenes[is_held])
        return self.rows(~held, scenes[~is_held]), self.rows(held, scenes[is_held])


def _boxes_of(rows: Tensor) -> YawBoxes:
    return YawBoxes(rows[:, :3], rows[:, 3:6], rows[:, 6])


def _rows_of(boxes: YawBoxes) -> Tensor:
    """(O, 7) rows ``(center, size, yaw)`` of a cache, the inverse of :func:`_boxes_of`."""
    return torch.cat([boxes.center, boxes.size, boxes.yaw[:, None]], dim=1)


@torch.no_grad()
def cache_proposals(detector: OddOneOutDetector, dataset, *, draws: int = 1, device: torch.device | str = "cpu",
                    carve_from_gt: bool = False, match_iou: float = 0.2, dtype: torch.dtype = torch.float16,
                    max_scenes: int = 0, progress: bool = True, cover: float = 0.0) -> ProposalCache:
    """Run the (frozen) scene model once per scene and view draw; keep every DBSCAN proposal's box-head input.

    Proposals come from :meth:`OddOneOutDetector.propose_boxes` (carving from the predicted foreground
    unless ``carve_from_gt``, as at test time) and are matched one-to-one to the GT boxes of their scene
    by the Hungarian algorithm on 3D IoU (pairs at or below ``match_iou`` are not matched): a matched
    proposal is an object whose box the head learns to correct, an unmatched one a ghost or fragment
    (``cover`` > 0: fragments are matched too, :func:`proposal_targets`). Every scene's GT boxes are recorded,
    also where it got no proposal (:func:`box_recall_on_cache` counts them missed, as ``oddsparse eval`` does),
    and each (draw, scene) is an item of its own (``item``).
    """
    from tqdm.auto import tqdm

    was_training = detector.training
    detector.eval()
    volumes, proposals, targets, matched, scenes, gts, gt_scenes, items, gt_items = [], [], [], [], [], [], [], [], []
    num_scenes = min(len(dataset), max_scenes) if max_scenes > 0 else len(dataset)
    bar = tqdm(total=draws * num_scenes, desc="box proposals", unit="scene", disable=not progress, dynamic_ncols=True)
    for draw in range(draws):
        for index in range(num_scenes):
            batch = prepare_batch(load_batch(dataset, [index], [draw]), device)
            output = detector.scene_model(batch.images, batch.K, batch.world_to_cam,
                                          carve_masks=batch.masks if carve_from_gt else None)
            boxes, scene_index = detector.propose_boxes(output)
            bar.update(1)
            item = draw * num_scenes + index
            gt = canonical_boxes(batch.gt_boxes)
            gts.append(_rows_of(gt).cpu())
            gt_scenes.append(torch.full((gt.yaw.numel(),), index, dtype=torch.long))
            gt_items.append(torch.full((gt.yaw.numel(),), item, dtype=torch.long))
            if boxes.center.shape[0] == 0:
                continue
            target, hit = proposal_targets(boxes, scene_index, batch.gt_boxes, batch.gt_scene, match_iou=match_iou,
                                           cover=cover)
            volumes.append(detector.proposal_volumes(output, boxes, scene_index).to("cpu", dtype))
            proposals.append(_rows_of(boxes).cpu())
            targets.append(_rows_of(target).cpu())
            matched.append(hit.cpu())
            scenes.append(torch.full((hit.numel(),), index, dtype=torch.long))
            items.append(torch.full((hit.numel(),), item, dtype=torch.long))
    bar.close()
    detector.train(was_training)
    if not volumes:  # no proposal in any scene: no proposal to train on (train_box_head_on_cache refuses it),
        head = detector.box_head  # every GT box missed
        r = head.resolution if head is not None else 1
        channels = detector.scene_model.volume_channels + 2
        none = torch.zeros(0, dtype=torch.long)
        return ProposalCache(torch.zeros(0, channels, r, r, r, dtype=dtype), torch.zeros(0, 7), torch.zeros(0, 7),
                             torch.zeros(0, dtype=torch.bool), none,
                             torch.cat(gts) if gts else torch.zeros(0, 7), torch.cat(gt_scenes) if gts else none,
                             none, torch.cat(gt_items) if gts else none)
    return ProposalCache(torch.cat(volumes), torch.cat(proposals), torch.cat(targets), torch.cat(matched),
                         torch.cat(scenes), torch.cat(gts), torch.cat(gt_scenes), torch.cat(items), torch.cat(gt_items))


def proposal_targets(boxes: YawBoxes, scene_index: Tensor, gt_boxes, gt_scene: Tensor, *,
                     match_iou: float = 0.2, cover: float = 0.0) -> tuple[YawBoxes, Tensor]:
    """The box head's targets for DBSCAN proposals: each proposal matched one-to-one to a GT box of its scene
    (Hungarian on 3D IoU above ``match_iou``) takes that GT box in canonical form; an unmatched one (a ghost or
    a fragment) keeps its own box. Returns ``(targets, matched)``, ``matched`` (P,) bool.

    ``cover`` > 0: an unmatched proposal of which at least this fraction of the volume lies inside a GT box of
    its scene (a fragment of that object, e.g. half of a thin part whose density has a gap) is matched too, to
    the GT box holding most of it: the head learns to grow a fragment to its whole object instead of dropping
    it, and the detector's ``box_nms_iou`` then keeps one of the boxes that several fragments grow to (not in
    the paper)."""
    _, gt_index = assign_labels(boxes, scene_index, gt_boxes, torch.zeros_like(gt_scene), gt_scene,
                                iou_threshold=match_iou)
    if cover > 0:
        gt_all, gt_scene = as_yaw_boxes(gt_boxes), gt_scene.to(scene_index.device)
        for scene in torch.unique(scene_index[gt_index < 0]).tolist():  # scene by scene: (P_s, G_s) volumes
            rows = torch.nonzero((scene_index == scene) & (gt_index < 0))[:, 0]
            gt_rows = torch.nonzero(gt_scene == scene)[:, 0]
            if gt_rows.numel() == 0:
                continue
            mine = YawBoxes(*(t[rows] for t in boxes))
            inside = box_intersection_3d(mine, YawBoxes(*(t[gt_rows.to(t.device)] for t in gt_all)))
            fraction, best = (inside / mine.size.double().prod(dim=1, keepdim=True).clamp(min=1e-12)).max(dim=1)
            take = fraction.to(rows.device) >= cover
            gt_index[rows[take]] = gt_rows[best.to(rows.device)[take]]
    gt = canonical_boxes(gt_boxes)
    hit = gt_index >= 0
    take = gt_index.clamp(min=0)
    targets = YawBoxes(*(torch.where(hit[:, None] if own.dim() > 1 else hit, g[take], own)
                         for own, g in zip(boxes, gt)))
    return targets, hit


def flip_proposals(volumes: Tensor, proposals: YawBoxes, turn: Tensor) -> tuple[Tensor, YawBoxes]:
    """Proposals where ``turn`` (P,) bool turned by pi about z: the volume read with x and y reversed and the yaw
    plus pi, the same box (box-head training augmentation)."""
    volumes = torch.where(turn[:, None, None, None, None], volumes.flip(2, 3), volumes)
    return volumes, YawBoxes(proposals.center, proposals.size, proposals.yaw + turn.to(proposals.yaw.dtype) * math.pi)


def box_head_loss(deltas: Tensor, objectness: Tensor, proposals: YawBoxes, targets: YawBoxes, matched: Tensor, *,
                  beta: float = 0.05) -> tuple[Tensor, dict[str, Tensor]]:
    """Smooth-L1 on the deltas of matched proposals + BCE of objectness (matched = object).

    Args:
        deltas: (P, 7) predicted; objectness: (P,) logits; proposals, targets: P boxes; matched: (P,) bool.
    Returns:
        ``(loss, terms)`` with detached ``box_regression`` and ``objectness``.
    """
    objectness_loss = F.binary_cross_entropy_with_logits(objectness, matched.float())
    if bool(matched.any()):
        target = box_deltas(YawBoxes(*(t[matched] for t in proposals)), YawBoxes(*(t[matched] for t in targets)))
        regression = F.smooth_l1_loss(deltas[matched], target.to(deltas.dtype), beta=beta)
    else:
        regression = deltas.sum() * 0.0
    return regression + objectness_loss, {"box_regression": regression.detach(), "objectness": objectness_loss.detach()}


@torch.no_grad()
def box_head_cache_loss(detector: OddOneOutDetector, cache: ProposalCache, *, chunk: int = 256) -> float:
    """:func:`box_head_loss` of ``detector.box_head`` (eval mode, no flips) over every proposal of ``cache``."""
    head = detector.box_head
    if head is None or len(cache) == 0:
        raise ValueError("box_head_cache_loss: needs a box head and a non-empty cache")
    device = next(head.parameters()).device
    was_training = head.training
    head.eval()
    sizes = _boxes_of(cache.proposals).size.float()
    outputs = [head(cache.volumes[i:i + chunk].float().to(device), sizes[i:i + chunk].to(device))
               for i in range(0, len(cache), chunk)]
    head.train(was_training)
    deltas, objectness = (torch.cat(parts) for parts in zip(*outputs))
    loss, _ = box_head_loss(deltas, objectness, _boxes_of(cache.proposals.to(device)),
                            _boxes_of(cache.targets.to(device)), cache.matched.to(device))
    return float(loss)


@torch.no_grad()
def cached_final_boxes(detector: OddOneOutDetector, cache: ProposalCache, *,
                       chunk: int = 256) -> tuple[YawBoxes, Tensor]:
    """The boxes :meth:`OddOneOutDetector.find_boxes` ends with, from cached proposals: the box head (eval mode)
    on each proposal's cached volume, proposals below ``objectness_threshold`` dropped, scene consensus where
    the detector has ``box_consensus``, each item (view draw of a scene) on its own as ``find_boxes`` sees it.
    Returns ``(boxes, item)``: the cache's item indices (its dataset scene indices for a cache without items,
    one draw)."""
    if cache.scene is None:
        raise ValueError("cached_final_boxes: the cache has no scene index (scene=None)")
    head = detector.box_head
    was_training = head is not None and head.training
    if head is not None:
        head.eval()
    item = cache.item if cache.item is not None else cache.scene
    boxes = detector.boxes_from_proposals(_boxes_of(cache.proposals.float()), item, cache.volumes, chunk=chunk)
    if was_training:
        head.train()
    return boxes


def box_recall_on_cache(detector: OddOneOutDetector, cache: ProposalCache, *, iou_threshold: float = 0.5,
                        chunk: int = 256) -> dict:
    """Box recall of the detector's final boxes on cached scenes, as ``oddsparse eval`` counts it: GT boxes
    matched one-to-one (Hungarian, IoU above ``iou_threshold``) by a box of :func:`cached_final_boxes`.

    Returns ``{"matched", "num_gt", "recall", "num_boxes"}``. Needs a cache with GT boxes
    (:func:`cache_proposals` records them).
    """
    if cache.gt is None or cache.gt_scene is None:
        raise ValueError("box_recall_on_cache: the cache has no GT boxes (gt=None); build it with cache_proposals")
    boxes, item = cached_final_boxes(detector, cache, chunk=chunk)
    num_gt = int(cache.gt_scene.numel())
    gt_item = cache.gt_item if cache.item is not None and cache.gt_item is not None else cache.gt_scene
    _, gt_index = assign_labels(boxes, item, _boxes_of(cache.gt.float()), torch.zeros(num_gt, dtype=torch.long),
                                gt_item, iou_threshold=iou_threshold)
    matched = int((gt_index >= 0).sum())
    return {"matched": matched, "num_gt": num_gt, "recall": matched / num_gt if num_gt else None,
            "num_boxes": int(item.numel())}


def train_box_head_on_cache(detector: OddOneOutDetector, cache: ProposalCache, *, steps: int, batch_size: int = 64,
                            lr: float = 1e-3, seed: int = 0, flip: bool = True, grad_clip: float | None = 1.0,
                            progress: bool = True, validation: ProposalCache | None = None,
                            validate_every: int = 50, history: list | None = None) -> list[float]:
    """Train ``detector.box_head`` alone on cached proposals (:func:`box_head_loss`).

    Each step draws ``batch_size`` proposals (a permutation per epoch, from ``seed``); with ``flip`` a
    proposal is turned by pi about z with probability 1/2 (its volume read with x and y reversed, its
    yaw plus pi: the same box, which the head must refine the same way). Returns the per-step losses.

    ``validation``: proposals of held-out scenes (:meth:`ProposalCache.split_scenes`); their loss
    (:func:`box_head_cache_loss`) is measured before the first step, every ``validate_every`` steps and
    after the last, and the head ends with the weights of the lowest (the starting head included: a
    head that training does not improve on held-out scenes is kept as it was). ``history``: a list that
    receives the ``(step, validation loss)`` pairs, the chosen one last as ``("best", step, loss)``.
    """
    from tqdm.auto import tqdm

    if detector.box_head is None:
        raise ValueError("train_box_head_on_cache: the detector has no box head (box_head=False)")
    if len(cache) == 0:
        raise ValueError("train_box_head_on_cache: the cache holds no proposal (the scene model proposed no box: "
                         "train stage 1 longer, or lower density_threshold)")
    head = detector.box_head
    device = next(head.parameters()).device
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    losses = []
    best = None

    def validate(step: int) -> None:
        nonlocal best
        loss = box_head_cache_loss(detector, validation)
        if history is not None:
            history.append((step, loss))
        if best is None or loss < best[1]:
            best = (step, loss, {k: v.detach().clone() for k, v in head.state_dict().items()})

    if validation is not None:
        if len(validation) == 0:
            raise ValueError("train_box_head_on_cache: the validation cache holds no proposal")
        validate(0)
    head.train()
    bar = tqdm(total=steps, desc="box head", unit="step", disable=not progress, dynamic_ncols=True)
    for step in range(1, steps + 1):
        if len(order) < batch_size:
            order += torch.randperm(len(cache), generator=generator).tolist()
        rows, order = torch.tensor(order[:batch_size]), order[batch_size:]
        volumes, proposals = cache.volumes[rows].float(), _boxes_of(cache.proposals[rows])
        if flip:
            volumes, proposals = flip_proposals(volumes, proposals, torch.rand(rows.numel(), generator=generator) < 0.5)
        deltas, objectness = head(volumes.to(device), proposals.size.float().to(device))
        loss, _ = box_head_loss(deltas, objectness, YawBoxes(*(t.to(device) for t in proposals)),
                                _boxes_of(cache.targets[rows].to(device)), cache.matched[rows].to(device))
        losses.append(_optimizer_step(loss, optimizer, head, grad_clip))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        bar.update(1)
        if validation is not None and (step % validate_every == 0 or step == steps):
            validate(step)
            head.train()
    bar.close()
    if best is not None:
        head.load_state_dict(best[2])
        if history is not None:
            history.append(("best", best[0], best[1]))
    return losses


# ---------------------------------------------------------------------------------------------- loop
def train_stage(*, stage: int, objective: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer,
                dataset, steps: int, batch_size: int, seed: int, run_dir: str | os.PathLike,
                checkpoint_payload: dict[str, Any], teacher: Callable[[PreparedBatch], Tensor] | None = None,
                checkpoint_every: int = 50, log_every: int = 1, resume: bool = True, dist: DistInfo | None = None,
                stop_after: int | None = None, grad_clip: float | None = 1.0, progress: bool = True,
                prefetch: int = 0) -> dict:
    """Train ``objective`` for ``steps`` optimizer steps; checkpoints ``run_dir/stage<stage>.pt``.

    Each step reads this rank's share of the global batch (:func:`batch_indices`), computes
    ``objective(batch, teacher(batch))``, and takes one optimizer step. Rank 0 shows a tqdm bar,
    writes TensorBoard scalars to ``run_dir/tb`` (``stage<k>/<term>``) and, every
    ``checkpoint_every`` steps (0: only at the end) and at the end, an atomic checkpoint: ``checkpoint_payload``
    plus ``model`` (``model.state_dict()``), ``optimizer``, ``stage``, ``step`` and ``rng`` (rank 0's; with several
    processes ``rng_per_rank`` too).

    Resume: with ``resume`` and an existing checkpoint of this stage, the model, optimizer, step and
    RNG states are restored (each rank's own where the same number of processes resumes); since the data order
    depends only on ``(seed, step)`` the continued run equals an uninterrupted one. A checkpoint whose step is
    already ``steps`` returns at once.

    Args:
        objective: module returning ``(loss, terms)``; wrapped in DistributedDataParallel when ``dist``
            has several processes (``find_unused_parameters=True``: stage 1 leaves the matcher
            unused, variants without distillation the projector).
        model: the module whose ``state_dict`` is saved (the whole detector).
        stop_after: stop (after checkpointing) once this step is reached, e.g. to test resume.
        prefetch: batches read ahead by a background thread (:func:`training_batches`; 0: each step reads its
            own). The result does not depend on it.
    Returns:
        dict with ``losses`` (per-step total loss on this rank, for the steps run now), ``last_loss`` (the
        stage's latest loss, also where this call resumed a finished stage and ran none: read from its
        checkpoint; nan for one written before checkpoints kept it), ``step``, ``seconds_per_step`` and the
        last ``terms``.
    """
    dist = dist or DistInfo()
    run_dir = Path(run_dir)
    path = run_dir / f"stage{stage}.pt"
    step, last_loss = 0, float("nan")
    if resume and path.is_file():
        checkpoint = load_checkpoint(path, map_location=dist.device)
        if checkpoint.get("stage") != stage:
            raise ValueError(f"{path}: field 'stage' is {checkpoint.get('stage')}, expected {stage}")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        step = int(checkpoint["step"])
        last_loss = float(checkpoint.get("loss", float("nan")))
        per_rank = checkpoint.get("rng_per_rank")
        if per_rank is not None and len(per_rank) == dist.world_size:
            set_rng_state(per_rank[dist.rank])  # each rank's own draws (stage 2's box flips differ per rank)
        else:
            if dist.world_size > 1 or per_rank is not None:
                warnings.warn(f"{path}: written by {len(per_rank) if per_rank is not None else 1} process(es), resumed "
                              f"by {dist.world_size}: every process continues from rank 0's random state, so the run "
                              f"will not equal an uninterrupted one")
            set_rng_state(checkpoint["rng"])
    if step >= steps:
        return {"losses": [], "last_loss": last_loss, "step": step, "seconds_per_step": float("nan"), "terms": {}}

    wrapped = objective
    if dist.distributed:
        wrapped = nn.parallel.DistributedDataParallel(
            objective, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None,
            find_unused_parameters=True)
    writer = None
    if dist.is_main and log_every > 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"))
    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=step, desc=f"stage {stage}", unit="step", disable=not (progress and dist.is_main),
               dynamic_ncols=True)

    def save() -> None:
        extra = {}
        if dist.distributed:  # every rank draws its own numbers (stage 2's box flips): keep each rank's state
            states = [None] * dist.world_size
            torch.distributed.all_gather_object(states, rng_state())
            extra["rng_per_rank"] = states
        if dist.is_main:
            save_checkpoint(path, dict(checkpoint_payload, model=model.state_dict(), optimizer=optimizer.state_dict(),
                                       stage=stage, step=step, rng=rng_state(), loss=last_loss, **extra))
        _barrier(dist)

    losses, terms, started = [], {}, time.perf_counter()
    objective.train()
    batches = training_batches(dataset, start=step, steps=steps, batch_size=batch_size, seed=seed, rank=dist.rank,
                               world_size=dist.world_size, prefetch=prefetch)
    try:
        while step < steps:
            batch = prepare_batch(next(batches), dist.device)
            teacher_features = teacher(batch) if teacher is not None else None
            loss, terms = wrapped(batch, teacher_features)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"stage {stage} step {step}: loss is {float(loss)} "
                                         f"(scenes {batch.scene_names})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(objective.parameters(), grad_clip)
            optimizer.step()
            step += 1
            last_loss = float(loss.detach())
            losses.append(last_loss)
            if writer is not None and step % log_every == 0:
                for name, value in terms.items():
                    writer.add_scalar(f"stage{stage}/{name}", float(value), step)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            bar.update(1)
            if (checkpoint_every > 0 and step % checkpoint_every == 0) or step == steps \
                    or (stop_after is not None and step >= stop_after):
                save()
            if stop_after is not None and step >= stop_after:
                break
    finally:
        batches.close()
        bar.close()
        if writer is not None:
            writer.close()
    elapsed = time.perf_counter() - started
    return {"losses": losses, "last_loss": last_loss, "step": step, "seconds_per_step": elapsed / max(1, len(losses)),
            "terms": {name: float(value) for name, value in terms.items()}}
