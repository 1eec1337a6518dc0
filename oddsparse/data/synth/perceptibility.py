"""How much of an anomaly the input views show: the pixels it changes.

An anomalous instance and its normal twin share the object frame and the pose, so rendering a scene
twice, once as generated and once with one anomalous instance swapped for the normal shape, gives
exactly the image evidence that instance carries: the pixels whose colour differs (the instance
itself, its shadow, what it hides or reveals). No detector that reads these views can tell an
anomaly that changes no pixel from a normal instance, and one that changes a handful of pixels
by a few grey levels is at the edge of what any model sees.

:func:`anomaly_pixel_changes` counts those pixels per object, view and colour threshold;
:func:`turn_pixel_changes` counts, for scale, those that turning an instance by a degree changes;
:func:`anomaly_evidence` and :func:`turn_evidence` count, from the same renders, the silhouette
pixels besides (foreground, any object, against floor and sky): the part of the evidence that a
method reading the views' foreground alone (carving, a visual hull, mask rendering) can use;
:func:`evidence_scores` turns the counts into the scores of an ideal observer (an anomaly is found
when it changes at least ``min_pixels`` pixels), whose object_AUROC bounds image-based methods from
above (``recipes/report_perceptibility.py``): strictly at a threshold of 1 level and one pixel, and
in practice at a few levels, since no model reads changes of a grey level or two.

Example:
    >>> from oddsparse.data.synth import generate_scene
    >>> spec = generate_scene("parts", seed=0, index=3, objects=(3, 6), views=12, size=64)  # doctest: +SKIP
    >>> anomaly_pixel_changes(spec, [0, 6], 64, thresholds=(8, 32)).shape  # doctest: +SKIP
    (5, 2, 2)
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch

from oddsparse.data.synth.model import ObjectModel
from oddsparse.data.synth.render import render_views

__all__ = ["anomaly_evidence", "anomaly_pixel_changes", "color_difference", "evidence_scores", "normal_model",
           "render_rgb", "turn_evidence", "turn_pixel_changes", "with_normal"]


def normal_model(spec) -> ObjectModel:
    """The model of the scene's normal instances (the first object without an anomaly kind).

    Raises:
        ValueError: when every object of ``spec`` is anomalous.
    """
    for obj in spec.objects:
        if obj.kind is None:
            return obj.model
    raise ValueError(f"scene {spec.name!r}: every object is anomalous, there is no normal shape to swap in")


def with_normal(spec, index: int, normal: ObjectModel | None = None):
    """``spec`` with object ``index``'s model replaced by ``normal`` (default: :func:`normal_model`) at the same
    pose; light, floor and textures unchanged."""
    objects = list(spec.objects)
    objects[index] = dataclasses.replace(objects[index], model=normal if normal is not None else normal_model(spec))
    return dataclasses.replace(spec, objects=objects)


def anomaly_evidence(spec, views: Sequence[int], image_size: int, *, thresholds: Sequence[int] = (8, 32),
                     normal: ObjectModel | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pixels each anomalous object changes, per view: in colour (per threshold) and in silhouette.

    Every view of ``views`` is rendered at ``image_size`` px as generated and, for each anomalous
    object ``o``, with ``o``'s model replaced by ``normal`` at the same pose (same light, floor and
    textures). A pixel counts for colour threshold ``t`` when one of its 8-bit RGB channels differs by
    at least ``t`` between the two renders, and for the silhouette when it shows some object in one
    render and none (floor or sky) in the other: what a foreground segmentation of the views sees
    change, the evidence left to a method that reads the views through their foreground only.

    Args:
        spec: a generated :class:`~oddsparse.data.synth.scene.SceneSpec` (its cameras, light, textures).
        views: indices into ``spec.world_to_cam``.
        image_size: H = W of the renders (the cameras are ``default_intrinsics(image_size)``, as the
            generator's and the recipes' are at any size).
        thresholds: T colour differences in 8-bit levels (1-255).
        normal: the shape swapped in (default: :func:`normal_model`).
    Returns:
        (O, V, T) int64 colour counts and (O, V) int64 silhouette counts; rows of normal objects are zero
        (nothing to swap).
    """
    thresholds, views = _check(spec, views, thresholds)
    colour = np.zeros((len(spec.objects), len(views), len(thresholds)), dtype=np.int64)
    silhouette = np.zeros((len(spec.objects), len(views)), dtype=np.int64)
    anomalous = [index for index, obj in enumerate(spec.objects) if obj.kind is not None]
    if not anomalous:
        return colour, silhouette
    normal = normal if normal is not None else normal_model(spec)
    generated = _render(spec, views, image_size)
    for index in anomalous:
        colour[index], silhouette[index] = _count(generated, _render(with_normal(spec, index, normal), views,
                                                                     image_size), thresholds)
    return colour, silhouette


def anomaly_pixel_changes(spec, views: Sequence[int], image_size: int, *, thresholds: Sequence[int] = (8, 32),
                          normal: ObjectModel | None = None) -> np.ndarray:
    """(O, V, T) int64: the colour counts of :func:`anomaly_evidence` (pixels each anomalous object changes by
    at least each threshold, per view; rows of normal objects are zero)."""
    return anomaly_evidence(spec, views, image_size, thresholds=thresholds, normal=normal)[0]


def turn_evidence(spec, index: int, views: Sequence[int], image_size: int, *, degrees: float = 1.0,
                  thresholds: Sequence[int] = (8, 32)) -> tuple[np.ndarray, np.ndarray]:
    """Pixels that turning object ``index`` by ``degrees`` about its vertical axis changes, per view: the
    scale of the differences that a small pose change alone makes (what an anomaly's change must stand
    out from when instances are compared across poses).

    Returns:
        (V, T) int64 colour counts and (V,) int64 silhouette counts, as :func:`anomaly_evidence` counts them.
    """
    thresholds, views = _check(spec, views, thresholds)
    if not 0 <= index < len(spec.objects):
        raise ValueError(f"scene {spec.name!r}: object index {index} out of range for {len(spec.objects)} objects")
    angle = np.radians(degrees)
    turn = np.eye(4)
    turn[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    objects = list(spec.objects)
    objects[index] = dataclasses.replace(objects[index], object_to_world=objects[index].object_to_world @ turn,
                                         yaw=objects[index].yaw + angle)
    return _count(_render(spec, views, image_size), _render(dataclasses.replace(spec, objects=objects), views,
                                                            image_size), thresholds)


def turn_pixel_changes(spec, index: int, views: Sequence[int], image_size: int, *, degrees: float = 1.0,
                       thresholds: Sequence[int] = (8, 32)) -> np.ndarray:
    """(V, T) int64: the colour counts of :func:`turn_evidence`."""
    return turn_evidence(spec, index, views, image_size, degrees=degrees, thresholds=thresholds)[0]


def _check(spec, views, thresholds) -> tuple[list[int], list[int]]:
    thresholds = [int(t) for t in thresholds]
    if not thresholds or min(thresholds) < 1 or max(thresholds) > 255:
        raise ValueError(f"thresholds must be 8-bit colour differences in 1..255, got {thresholds}")
    views = [int(v) for v in views]
    if not views or min(views) < 0 or max(views) >= len(spec.world_to_cam):
        raise ValueError(f"scene {spec.name!r}: views {views} must index its {len(spec.world_to_cam)} cameras")
    return thresholds, views


def render_rgb(scene, views: Sequence[int], image_size: int) -> np.ndarray:
    """(V, H, W, 3) int16 renders of ``views`` at ``image_size`` px (``default_intrinsics``; int16: differences
    do not wrap)."""
    return _render(scene, views, image_size)[0]


def _render(scene, views: Sequence[int], image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`render_rgb`'s renders and the (V, H, W) bool foreground (pixels that show some object)."""
    from oddsparse.geometry.cameras import default_intrinsics

    K = default_intrinsics(image_size, dtype=torch.float64).numpy()
    world_to_cam = np.asarray(scene.world_to_cam, dtype=np.float64)[list(views)]
    renders = render_views(scene.raycaster(), scene.light, K, world_to_cam, image_size, seed=scene.texture_seed)
    return np.stack([r.rgb for r in renders]).astype(np.int16), np.stack([r.labels >= 1 for r in renders])


def color_difference(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(..., H, W) largest 8-bit channel difference between two renders of :func:`render_rgb`."""
    return np.abs(first.astype(np.int16) - second.astype(np.int16)).max(-1)


def _count(first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray],
           thresholds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(V, T) pixels whose largest channel difference reaches each threshold and (V,) pixels whose foreground
    differs, between two :func:`_render` results."""
    change = color_difference(first[0], second[0]).reshape(len(first[0]), -1)  # (V, H*W)
    colour = np.stack([(change >= t).sum(1) for t in thresholds], axis=1).astype(np.int64)
    return colour, (first[1] != second[1]).reshape(len(first[1]), -1).sum(1).astype(np.int64)


def evidence_scores(changed_pixels, labels, min_pixels: int) -> np.ndarray:
    """Scores of an ideal observer that finds an anomaly when it changes at least ``min_pixels`` pixels.

    Args:
        changed_pixels: (O,) pixels each object changes, summed over the input views (one threshold).
        labels: (O,) bool, True = anomalous.
        min_pixels: evidence needed (>= 1).
    Returns:
        (O,) float64: 1 for the anomalies with enough evidence, 0 for every other object, so that the
        anomalies without it tie with the normal objects (they count 1/2 in an AUROC).

    Example:
        >>> evidence_scores([0, 5, 2, 0], [False, True, True, True], min_pixels=3).tolist()
        [0.0, 1.0, 0.0, 0.0]
    """
    if min_pixels < 1:
        raise ValueError(f"min_pixels must be >= 1, got {min_pixels}")
    changed = np.asarray(changed_pixels, dtype=np.int64)
    labels = np.asarray(labels, dtype=bool)
    if changed.shape != labels.shape:
        raise ValueError(f"changed_pixels {changed.shape} and labels {labels.shape} must have one entry per object")
    return (labels & (changed >= min_pixels)).astype(np.float64)
