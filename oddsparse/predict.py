"""Run a trained detector on a scene folder, a capture folder or in-memory views.

Inputs
    * a scene folder of the published format (``scene3d.metadata.json``, ``RGB/``, ...): read with
      :func:`~oddsparse.data.read_scene`; ground truth, when present, is not used;
    * a **capture folder** for real captures: images plus a ``cameras.json`` (:func:`read_capture_folder`);
    * in-memory views: images (V, H, W, 3) uint8, K (V, 3, 3), world_to_cam (V, 4, 4) (:func:`predict_views`).

Capture folder format (``<folder>/cameras.json`` next to the images)::

    {
      "K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],        # shared by all views, or a list of V 3x3
                                                        # (in image order), or {"img.png": 3x3, ...}
      "world_to_cam": {"img_000.png": [[...4x4...]], ...}  # or a list of V 4x4 in sorted image order
    }

``world_to_cam`` maps world points to the OpenCV camera frame (x right, y down, z forward); ``K``
refers to the stored image resolution, pixel centres at index + 0.5 (see
:mod:`oddsparse.geometry.conventions`). The world frame must be the one the detector's voxel grid
lives in: metres, z up, the floor at z = 0, the objects inside the grid (by default 3.84 m x 3.84 m
x 0.64 m centred on the origin). With a dict, the views are its keys (file names relative to the
folder) in sorted order; with a list, the images are the folder's ``.png`` / ``.jpg`` / ``.jpeg``
files in sorted name order. Every problem raises :class:`~oddsparse.data.scene_io.SceneFormatError`
naming the file and the field.

Outputs
    :class:`Prediction` (per-object yaw boxes, anomaly scores, labels = score >= threshold, the rule of
    ``oddsparse eval``),
    :func:`write_prediction_json`, and :func:`draw_predictions` (PNG overlays of the projected boxes,
    green = normal, red = anomaly, with the score; like the paper's Fig. 3).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from oddsparse.data.scene_io import (SceneFormatError, load_json_object, parse_camera_matrix, read_scene,
                                     resize_views)
from oddsparse.eval.evaluate import detect_scene, evenly_spaced_views, parse_int_list
from oddsparse.geometry.boxes import YawBoxes, yaw_boxes_to_corners
from oddsparse.geometry.cameras import project_points
from oddsparse.structures.scene import Scene
from oddsparse.utils.errors import InputError

__all__ = ["Prediction", "Capture", "predict_views", "predict_scene", "read_capture_folder", "load_views",
           "draw_predictions", "write_prediction_json", "add_predict_arguments", "run_predict", "CAMERAS_FILE"]

#: Name of the cameras file of a capture folder.
CAMERAS_FILE = "cameras.json"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Prediction:
    """Objects found in one scene.

    Attributes:
        boxes: :class:`YawBoxes` of the O objects: center (O, 3), size (O, 3) in the box frame, yaw (O,).
        scores: (O,) anomaly probabilities.
        labels: (O,) int64, 1 = anomaly (``score >= threshold``, as ``oddsparse eval`` labels).
        threshold: the score threshold of ``labels``.
    """

    boxes: YawBoxes
    scores: Tensor
    labels: Tensor
    threshold: float = 0.5

    @property
    def num_objects(self) -> int:
        return int(self.scores.shape[0])

    def to_dict(self) -> dict:
        """JSON-ready ``{"threshold", "num_objects", "num_anomalous", "objects": [...]}``."""
        objects = []
        for i in range(self.num_objects):
            objects.append({"center": [float(v) for v in self.boxes.center[i]],
                            "size": [float(v) for v in self.boxes.size[i]],
                            "yaw": float(self.boxes.yaw[i]), "score": float(self.scores[i]),
                            "label": int(self.labels[i]), "anomalous": bool(self.labels[i])})
        return {"threshold": self.threshold, "num_objects": self.num_objects,
                "num_anomalous": int(self.labels.sum()), "objects": objects}


@dataclass(frozen=True)
class Capture:
    """Calibrated views of one scene.

    Attributes:
        images: (V, H, W, 3) uint8. K: (V, 3, 3) for these images. world_to_cam: (V, 4, 4) OpenCV.
        names: V view names (image file names of a capture folder, ``view_XXXX`` for stored views).
        folder: where the views come from.
    """

    images: Tensor
    K: Tensor
    world_to_cam: Tensor
    names: list
    folder: Path


def _as_tensor(value, dtype) -> Tensor:
    return value.to(dtype) if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value), dtype=dtype)


def _resize_views(images: Tensor, K: Tensor, image_size) -> tuple[Tensor, Tensor]:
    """Resize images (V, H, W, 3) uint8 to ``image_size`` and scale K (V, 3, 3) to match."""
    size = (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    return resize_views(images, K, size)


def predict_views(detector, images, K, world_to_cam, *, image_size=None, threshold: float = 0.5) -> Prediction:
    """Detect and score the objects seen by in-memory views.

    Args:
        detector: an :class:`~oddsparse.models.detector.OddOneOutDetector` (e.g. from :func:`load_detector`).
        images: (V, H, W, 3) uint8 (tensor or array). K: (V, 3, 3) or (3, 3) for the (H, W) images.
        world_to_cam: (V, 4, 4) OpenCV extrinsics.
        image_size: optional ``S`` or ``(H, W)`` to resize to first (K is scaled to match).
        threshold: scores at or above it are labelled anomalous.
    """
    images = _as_tensor(images, torch.uint8)
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"predict_views: images must be (V, H, W, 3) uint8, got {tuple(images.shape)}")
    views = images.shape[0]
    K = _as_tensor(K, torch.float32)
    K = K.expand(views, 3, 3) if K.shape == (3, 3) else K
    world_to_cam = _as_tensor(world_to_cam, torch.float32)
    if K.shape != (views, 3, 3) or world_to_cam.shape != (views, 4, 4):
        raise ValueError(f"predict_views: K must be (V={views}, 3, 3) and world_to_cam (V, 4, 4), got "
                         f"{tuple(K.shape)} and {tuple(world_to_cam.shape)}")
    if image_size is not None:
        images, K = _resize_views(images, K, image_size)
    if hasattr(detector, "eval"):
        detector.eval()
    boxes, scores = detect_scene(detector, images, K.contiguous(), world_to_cam)
    return Prediction(boxes=boxes, scores=scores, labels=(scores >= threshold).long(), threshold=threshold)


def _select(num_views: int, views) -> list[int]:
    """``views`` = None (all), an int n (n evenly spaced views) or a sequence of indices."""
    if views is None:
        return list(range(num_views))
    if isinstance(views, int):
        return evenly_spaced_views(num_views, views)
    views = [int(v) for v in views]
    for v in views:
        if not 0 <= v < num_views:
            raise InputError(f"view {v} requested but there are {num_views} views")
    return views


def load_views(source, views=None, *, image_size=None) -> Capture:
    """Views of a :class:`Scene`, a scene folder or a capture folder, as a :class:`Capture`.

    ``views``: None (all), an int n (n evenly spaced views) or a list of view indices.
    ``image_size``: optional ``S`` or ``(H, W)`` to resize to (K scaled to match).
    The capture's ``names`` name the selected views (``view_0003`` for stored view 3 of a scene,
    the image file names of a capture folder).
    """
    if isinstance(source, Scene):
        index = _select(source.num_views, views)
        scene = source.select_views(index)
        capture = Capture(scene.images, scene.K, scene.world_to_cam,
                          [f"view_{int(v):04d}" for v in scene.view_ids], Path(scene.name))
    else:
        folder = Path(source)
        if (folder / "scene3d.metadata.json").is_file():
            from oddsparse.data.scene_io import read_scene_metadata

            index = _select(read_scene_metadata(folder).num_views, views)
            scene = read_scene(folder, views=index)
            capture = Capture(scene.images, scene.K, scene.world_to_cam, [f"view_{v:04d}" for v in index], folder)
        elif (folder / CAMERAS_FILE).is_file():
            full = read_capture_folder(folder)
            index = _select(full.images.shape[0], views)
            capture = Capture(full.images[index], full.K[index], full.world_to_cam[index],
                              [full.names[i] for i in index], folder)
        elif not folder.is_dir():
            raise SceneFormatError(folder, "<folder>", "not found")
        else:
            raise SceneFormatError(folder, "<folder>", f"neither a scene folder (scene3d.metadata.json) nor a "
                                                       f"capture folder ({CAMERAS_FILE})")
    if image_size is not None:
        images, K = _resize_views(capture.images, capture.K, image_size)
        capture = Capture(images, K, capture.world_to_cam, capture.names, capture.folder)
    return capture


def predict_scene(detector, scene_or_path, views=None, *, image_size=None, threshold: float = 0.5) -> Prediction:
    """Detect and score the objects of a :class:`Scene`, a scene folder or a capture folder.

    Args:
        detector: an :class:`~oddsparse.models.detector.OddOneOutDetector`.
        scene_or_path: a :class:`Scene` or a folder path (published scene format or capture folder).
        views: None (all views), an int n (n evenly spaced views) or a list of view indices.
        image_size: optional ``S`` or ``(H, W)`` to resize the images to (e.g. the checkpoint's ``image_size``).
        threshold: scores at or above it are labelled anomalous.
    """
    capture = load_views(scene_or_path, views, image_size=image_size)
    return predict_views(detector, capture.images, capture.K, capture.world_to_cam, threshold=threshold)


# ------------------------------------------------------------------------------------ capture folder
def _read_image(file: Path) -> np.ndarray:
    from PIL import Image

    if not file.is_file():
        raise SceneFormatError(file, "image", "missing file")
    try:
        with Image.open(file) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as err:
        raise SceneFormatError(file, "image", f"cannot be decoded ({err})") from None


def read_capture_folder(folder) -> Capture:
    """Read a capture folder (images + ``cameras.json``; format in the module docstring).

    Raises:
        SceneFormatError: naming ``cameras.json`` (or the image) and the field at fault.
    """
    folder = Path(folder)
    file = folder / CAMERAS_FILE
    data = load_json_object(file)  # missing, unreadable, not UTF-8, malformed or not an object: named errors
    for key in ("K", "world_to_cam"):
        if key not in data:
            raise SceneFormatError(file, key, "missing")
    poses = data["world_to_cam"]
    if isinstance(poses, dict):
        names = sorted(poses)
        extrinsics = [parse_camera_matrix(file, poses[n], f"world_to_cam[{n!r}]", "world_to_cam") for n in names]
    elif isinstance(poses, list):
        names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
        if len(names) != len(poses):
            raise SceneFormatError(file, "world_to_cam", f"lists {len(poses)} cameras but the folder holds "
                                                         f"{len(names)} images ({', '.join(names[:5])}...)")
        extrinsics = [parse_camera_matrix(file, pose, f"world_to_cam[{i}]", "world_to_cam")
                      for i, pose in enumerate(poses)]
    else:
        raise SceneFormatError(file, "world_to_cam", "must be an object {image name: 4x4} or a list of 4x4")
    if not names:
        raise SceneFormatError(file, "world_to_cam", "lists no views")

    intrinsics = data["K"]
    if isinstance(intrinsics, dict):
        Ks = []
        for n in names:
            if n not in intrinsics:
                raise SceneFormatError(file, f"K[{n!r}]", "missing")
            Ks.append(parse_camera_matrix(file, intrinsics[n], f"K[{n!r}]", "K"))
    elif isinstance(intrinsics, list) and np.asarray(intrinsics, dtype=object).shape == (3, 3):
        Ks = [parse_camera_matrix(file, intrinsics, "K", "K")] * len(names)
    elif isinstance(intrinsics, list):
        if len(intrinsics) != len(names):
            raise SceneFormatError(file, "K", f"must be one 3x3 matrix or {len(names)} of them (one per view), "
                                              f"got {len(intrinsics)} entries")
        Ks = [parse_camera_matrix(file, k, f"K[{i}]", "K") for i, k in enumerate(intrinsics)]
    else:
        raise SceneFormatError(file, "K", "must be a 3x3 matrix, a list of 3x3 or an object {image name: 3x3}")

    images, size = [], None
    for name in names:
        image_file = folder / name
        if not image_file.resolve().is_relative_to(folder.resolve()):
            raise SceneFormatError(file, f"world_to_cam[{name!r}]", "image path leaves the capture folder")
        if not image_file.is_file():
            raise SceneFormatError(file, f"world_to_cam[{name!r}]", f"image {image_file} not found")
        array = _read_image(image_file)
        if size is None:
            size = array.shape[:2]
        elif array.shape[:2] != size:
            raise SceneFormatError(image_file, "image", f"size {array.shape[:2]} differs from the first image's {size}")
        images.append(array)
    return Capture(images=torch.from_numpy(np.stack(images)), K=torch.tensor(np.stack(Ks), dtype=torch.float32),
                   world_to_cam=torch.tensor(np.stack(extrinsics), dtype=torch.float32), names=names, folder=folder)


# ------------------------------------------------------------------------------------------ outputs
# The 12 edges of a box: corner pairs whose index bits differ in one bit (see yaw_boxes_to_corners).
_BOX_EDGES = [(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1]
NORMAL_COLOUR = (0, 200, 0)
ANOMALY_COLOUR = (230, 20, 20)


def _overlay_names(names: Sequence[str] | None, views: int) -> list[str]:
    """One distinct file stem per view: ``view_XXXX``, or each name's path without its suffix (folders joined by
    ``_``), keeping the suffix too where two names would share a stem; the view index decides what is left."""
    if names is None:
        return [f"view_{v:04d}" for v in range(views)]
    if len(names) != views:
        raise ValueError(f"draw_predictions: {len(names)} names for {views} views")
    stems = ["_".join(Path(name).with_suffix("").parts) for name in names]
    stems = [stem if stems.count(stem) == 1 else "_".join(Path(name).parts).replace(".", "_")
             for stem, name in zip(stems, names)]
    return [stem if stems.count(stem) == 1 else f"{stem}_{v:04d}" for v, stem in enumerate(stems)]


def draw_predictions(images, K, world_to_cam, prediction: Prediction, out_dir, *, names: Sequence[str] | None = None,
                     min_size: int = 256) -> list[Path]:
    """Write one PNG per view with the predicted boxes projected on it (green = normal, red = anomaly).

    Args:
        images: (V, H, W, 3) uint8. K: (V, 3, 3) for these images. world_to_cam: (V, 4, 4).
        prediction: the :class:`Prediction` to draw; each box is labelled with its score.
        out_dir: folder to write ``view_XXXX.png`` (or ``<name>.png`` from ``names``, the name's folders and
            suffix joined by ``_``: ``cam0/000.png`` -> ``cam0_000.png``, ``a.jpg`` -> ``a_jpg.png`` where another
            name shares the stem) into; two views never write the same file.
        min_size: images smaller than this are enlarged by an integer factor first (readable labels).
    Returns:
        The paths written, one per view.
    """
    from PIL import Image, ImageDraw

    images = _as_tensor(images, torch.uint8)
    K = _as_tensor(K, torch.float64)
    world_to_cam = _as_tensor(world_to_cam, torch.float64)
    views, height, width = images.shape[:3]
    scale = max(1, -(-min_size // max(1, min(height, width))))  # ceil(min_size / side)
    corners = yaw_boxes_to_corners(prediction.boxes.center.double(), prediction.boxes.size.double(),
                                   prediction.boxes.yaw.double())  # (O, 8, 3)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = _overlay_names(names, views)
    written = []
    for v in range(views):
        canvas = Image.fromarray(images[v].numpy()).resize((width * scale, height * scale), Image.NEAREST)
        draw = ImageDraw.Draw(canvas)
        line = max(1, round(scale * width / 256 * 2))
        if corners.shape[0]:
            uv, depth = project_points(corners.reshape(-1, 3), K[v], world_to_cam[v])  # (O*8, 2), (O*8,)
            uv = (uv * scale).reshape(-1, 8, 2).tolist()
            front = (depth > 1e-3).reshape(-1, 8).tolist()
            for o in range(corners.shape[0]):
                colour = ANOMALY_COLOUR if int(prediction.labels[o]) else NORMAL_COLOUR
                for a, b in _BOX_EDGES:
                    if front[o][a] and front[o][b]:
                        draw.line([tuple(uv[o][a]), tuple(uv[o][b])], fill=colour, width=line)
                visible = [uv[o][c] for c in range(8) if front[o][c]]
                if visible:
                    top = min(visible, key=lambda p: p[1])
                    text = f"{float(prediction.scores[o]):.2f}"
                    x, y = top[0], max(0.0, top[1] - 12)
                    box = draw.textbbox((x, y), text)
                    draw.rectangle(box, fill=(0, 0, 0))
                    draw.text((x, y), text, fill=colour)
        path = out_dir / f"{files[v]}.png"
        tmp = out_dir / f".{path.name}.tmp.png"
        canvas.save(tmp)
        tmp.replace(path)
        written.append(path)
    return written


def write_prediction_json(prediction: Prediction, path, *, extra: dict | None = None) -> Path:
    """Atomically write ``prediction.to_dict()`` (plus ``extra`` fields, e.g. scene and checkpoint) as JSON."""
    from oddsparse.utils.checkpoint import atomic_write_bytes

    payload = {**(extra or {}), **prediction.to_dict()}
    path = Path(path)
    atomic_write_bytes(path, (json.dumps(payload, indent=2, allow_nan=False) + "\n").encode())
    return path


# ------------------------------------------------------------------------------------------ CLI
def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``oddsparse predict``."""
    parser.add_argument("source", type=Path, help="scene folder (published format) or capture folder (images + "
                                                  f"{CAMERAS_FILE})")
    parser.add_argument("--checkpoint", required=True, type=Path, help="detector checkpoint (e.g. <run>/final.pt)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (prediction.json + overlays/)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--views", type=parse_int_list, default=None, help="view indices, comma-separated (default all)")
    group.add_argument("--num-views", type=int, default=None, help="use this many evenly spaced views")
    parser.add_argument("--image-size", type=int, default=None,
                        help="image height = width (default: the checkpoint's image_size)")
    parser.add_argument("--threshold", type=float, default=0.5, help="anomaly score threshold (default 0.5)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def run_predict(args: argparse.Namespace) -> int:
    """``oddsparse predict``: load the checkpoint (weights only), detect, write prediction.json and overlays."""
    from oddsparse.models.detector import load_detector

    detector, checkpoint = load_detector(args.checkpoint, map_location=args.device)
    detector.to(args.device)
    if args.image_size is not None:
        image_size = args.image_size
    else:
        stored = checkpoint.get("image_size")
        image_size = tuple(int(s) for s in stored) if stored is not None else None
    views = args.num_views if args.num_views is not None else args.views
    capture = load_views(args.source, views, image_size=image_size)
    prediction = predict_views(detector, capture.images, capture.K, capture.world_to_cam, threshold=args.threshold)
    path = write_prediction_json(prediction, args.out / "prediction.json", extra={
        "source": str(Path(args.source).resolve()), "name": capture.folder.name, "views": capture.names,
        "image_size": list(capture.images.shape[1:3]), "checkpoint": str(Path(args.checkpoint).resolve())})
    overlays = draw_predictions(capture.images, capture.K, capture.world_to_cam, prediction, args.out / "overlays",
                                names=capture.names)
    print(f"{prediction.num_objects} objects, {int(prediction.labels.sum())} anomalous; wrote {path} and "
          f"{len(overlays)} overlays in {args.out / 'overlays'}")
    return 0

