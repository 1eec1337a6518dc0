"""Writes synthetic scenes in the published ToysAD-8K / PartsAD-15K folder format, and whole datasets.

One scene folder (see ``../shared/data/README.md`` for the published layout)::

    RGB/VVVV.png                                  RGBA uint8 render (alpha 255)
    segmentations/<name>/<name>_VVVV.png          visible-pixel mask of object <name> (205 on, 0 off);
                                                  ``floor_object`` is the floor
    depth_exr/VVVV.exr                            metric z-depth, R = G = B float32, background 1e10
    depth_png/VVVV.png                            uint16 preview normalised per image (background 65535)
    binary_labels/VVVV.png                        union of the anomalous objects' visible masks (0 / 255)
    scene3d.metadata.json                         objects (name, path, rotation_matrix, rotation_euler,
                                                  location, scale, bbox), camera (poses, K), scene, rendering_info
    scene2d.metadata.json                         blend_paths, anomaly_labels (1 = NORMAL, as published),
                                                  bbox per view of the anomalous objects [x1, y1, x2 + 1, y2 + 1]

A dataset is a folder of scene folders plus ``splits.json``. Writing is deterministic (same bytes for
the same arguments: no timestamps, fixed PNG/EXR settings), atomic per scene (a scene is written to
``.tmp-<name>-<pid>`` and renamed when complete) and resumable (finished scenes are skipped).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from oddsparse.data.scene_io import category_of
from oddsparse.data.synth.render import BACKGROUND_DEPTH, RenderTimings, ViewRender, render_views
from oddsparse.data.synth import GENERATOR_VERSION as _SYNTH_VERSION  # the package sets it first
from oddsparse.data.synth.scene import SceneSpec, generate_scene, pick_category, scene_name

__all__ = [
    "FLOOR_NAME",
    "GENERATOR_VERSION",
    "blend_path",
    "write_scene",
    "render_and_write_scene",
    "generate_dataset",
    "dataset_splits",
    "SPLITS_FILE",
    "SETTINGS_FILE",
]

FLOOR_NAME = "floor_object"
GENERATOR_VERSION = f"oddsparse-synth-{_SYNTH_VERSION}"  # rendering_info.generator of every scene
SPLITS_FILE = "splits.json"
SETTINGS_FILE = "generation.json"  # the arguments that made the dataset's scenes (resuming checks them)
_MASK_ON = 205  # the published masks store ~205 on object pixels
_TMP_PREFIX = ".tmp-"


def blend_path(spec: SceneSpec, obj) -> str:
    """Published-style path naming the normal shape, or ``<shape>-<kind>-<nnn>`` for an anomaly."""
    shape = spec.shape_name.replace("-", "_")
    stem = shape if obj.kind is None else f"{shape}-{obj.kind}-{obj.variant:03d}"
    return f"synthetic/{spec.family}/{shape}/{stem}.blend"


def _save_png(image: np.ndarray, path: Path, mode: str) -> None:
    image = Image.fromarray(image)
    if image.mode != mode:
        raise ValueError(f"{path}: expected a {mode} image, got {image.mode}")
    image.save(path, format="PNG", compress_level=1)


def _save_exr(depth: np.ndarray, path: Path) -> None:
    import OpenEXR

    depth = np.ascontiguousarray(depth, dtype=np.float32)
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, {"R": depth, "G": depth, "B": depth}) as exr:
        exr.write(str(path))


def _depth_preview(depth: np.ndarray) -> np.ndarray:
    """uint16 preview: foreground depth normalised to [0, 65535] per image, background 65535."""
    hit = depth < BACKGROUND_DEPTH * 0.5
    out = np.full(depth.shape, 65535, dtype=np.uint16)
    if hit.any():
        lo, hi = float(depth[hit].min()), float(depth[hit].max())
        out[hit] = np.round((depth[hit] - lo) / max(hi - lo, 1e-12) * 65535.0).astype(np.uint16)
    return out


def _bbox_2d(mask: np.ndarray) -> list[int] | None:
    """Box ``[x1, y1, x2 + 1, y2 + 1]`` (columns x, rows y) of a non-empty mask, else ``None``."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return None
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def _metadata(spec: SceneSpec, renders: list[ViewRender]) -> tuple[dict, dict]:
    objects = []
    for obj in spec.objects:
        matrix = obj.object_to_world
        location = [float(v) for v in matrix[:3, 3]]
        objects.append({
            "name": obj.name,
            "path": blend_path(spec, obj),
            "rotation_matrix": [[float(v) for v in row] for row in matrix],
            "rotation_euler": [0.0, 0.0, float(math.atan2(matrix[1, 0], matrix[0, 0]))],
            "location": location,
            "scale": [1.0, 1.0, 1.0],
            "bbox": [location, [float(v) for v in spec.normal_extents]],
        })
    floor, light = spec.floor, spec.light
    scene3d = {
        "objects": objects,
        "camera": {
            "poses": [{"rotation": [[float(v) for v in row] for row in pose]} for pose in spec.world_to_cam],
            "K": [[float(v) for v in row] for row in spec.K],
        },
        "scene": {
            "floor_pbr": f"synthetic-{floor.kind}",
            "background_hdr": "synthetic-gradient" if light.environment is None else "synthetic-environment",
            "floor": {"kind": floor.kind, "color_a": list(floor.color_a), "color_b": list(floor.color_b),
                      "tile": floor.tile, "half_extent": floor.half_extent},
            "light": {"direction": list(light.direction), "intensity": light.intensity, "ambient": light.ambient},
            "family": spec.family,
            "category": spec.category,
            "shape": spec.shape_name,
        },
        "rendering_info": {"renderer": "oddsparse raycast (embree)", "generator": GENERATOR_VERSION,
                           "seed": spec.seed, "scene_index": spec.index, "image_size": spec.image_size},
    }
    boxes = {}
    anomalous = [i for i, o in enumerate(spec.objects) if o.is_anomalous]
    for view, render in enumerate(renders):
        view_boxes = []
        for i in anomalous:
            box = _bbox_2d(render.labels == i + 1)
            if box is not None:
                view_boxes.append(box)
        boxes[f"{view:04d}.png"] = view_boxes
    scene2d = {
        "blend_paths": [o["path"] for o in objects],
        "anomaly_labels": [0 if o.is_anomalous else 1 for o in spec.objects],  # published: 1 = normal
        "bbox": boxes,
    }
    return scene3d, scene2d


def write_scene(spec: SceneSpec, renders: list[ViewRender], folder: str | os.PathLike) -> None:
    """Write one rendered scene into ``folder`` (created; existing files are overwritten)."""
    folder = Path(folder)
    names = [o.name for o in spec.objects]
    for sub in ("RGB", "depth_exr", "depth_png", "binary_labels"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for name in [FLOOR_NAME, *names]:
        (folder / "segmentations" / name).mkdir(parents=True, exist_ok=True)
    anomalous = np.array([o.is_anomalous for o in spec.objects] + [False])  # index -1 -> False
    for view, render in enumerate(renders):
        stem = f"{view:04d}"
        alpha = np.full(render.rgb.shape[:2] + (1,), 255, dtype=np.uint8)
        _save_png(np.concatenate([render.rgb, alpha], axis=2), folder / "RGB" / f"{stem}.png", "RGBA")
        for label, name in enumerate([FLOOR_NAME, *names]):
            on = render.labels == label
            mask = np.zeros(on.shape + (4,), dtype=np.uint8)
            mask[..., :3] = np.where(on, _MASK_ON, 0)[..., None]
            mask[..., 3] = 255
            _save_png(mask, folder / "segmentations" / name / f"{name}_{stem}.png", "RGBA")
        _save_exr(render.depth, folder / "depth_exr" / f"{stem}.exr")
        _save_png(_depth_preview(render.depth), folder / "depth_png" / f"{stem}.png", "I;16")
        object_index = render.labels.astype(np.int64) - 1  # -2 background, -1 floor, o object
        labels = np.where(object_index >= 0, anomalous[np.clip(object_index, 0, None)], False)
        _save_png(np.where(labels, 255, 0).astype(np.uint8), folder / "binary_labels" / f"{stem}.png", "L")
    scene3d, scene2d = _metadata(spec, renders)
    (folder / "scene3d.metadata.json").write_text(json.dumps(scene3d, indent=1) + "\n")
    (folder / "scene2d.metadata.json").write_text(json.dumps(scene2d, indent=2) + "\n")


def render_and_write_scene(spec: SceneSpec, folder: str | os.PathLike,
                           timings: RenderTimings | None = None) -> None:
    """Render ``spec`` and write it into ``folder``; ``timings`` accumulates the stage times."""
    timings = timings if timings is not None else RenderTimings()
    start = timings.clock()
    raycaster = spec.raycaster()  # builds shading normals and the embree scene
    timings.meshing += timings.clock() - start
    renders = render_views(raycaster, spec.light, spec.K, spec.world_to_cam, spec.image_size,
                           seed=spec.texture_seed, timings=timings)
    start = timings.clock()
    write_scene(spec, renders, folder)
    timings.extra["writing"] = timings.extra.get("writing", 0.0) + timings.clock() - start


# ---------------------------------------------------------------------------------------- dataset
def dataset_splits(family: str, scenes: int, seed: int, *, test_fraction: float = 0.2,
                   unseen_fraction: float = 0.25, categories=None) -> dict:
    """Train / test split of a generated dataset (depends only on the arguments).

    For toys, ``unseen_fraction`` of the categories, rounded (2 of the default ten; ``categories``: see
    :func:`~oddsparse.data.synth.shapes.toy_categories`; None: the default ten) are *unseen*: their scenes
    are all in ``test``; the other scenes go to ``test`` with probability ``test_fraction``. Returns the
    JSON-able dict written to ``splits.json``.
    """
    from oddsparse.data.synth.shapes import TOY_CATEGORIES, toy_categories

    categories = toy_categories(categories, family=family)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5B117]))
    unseen: list[str] = []
    seen: list[str] = []
    if family == "toys":
        names = list(categories or TOY_CATEGORIES)
        order = rng.permutation(len(names))
        count = max(1, int(round(unseen_fraction * len(names)))) if len(names) > 1 else 0
        unseen = sorted(names[i] for i in order[:count])
        seen = sorted(c for c in names if c not in unseen)
    names = [scene_name(family, i, pick_category(family, seed, i, categories)) for i in range(scenes)]
    test_draw = rng.random(scenes) < test_fraction
    train, test = [], []
    for name, draw in zip(names, test_draw):
        (test if draw or category_of(name) in unseen else train).append(name)
    out = {"family": family, "seed": int(seed), "scenes": int(scenes), "train": train, "test": test}
    if family == "toys":
        out["seen_categories"] = seen
        out["unseen_categories"] = unseen
        out["seen"] = [n for n in test if category_of(n) not in unseen]
        out["unseen"] = [n for n in test if category_of(n) in unseen]
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale_tmp(out: Path) -> list[str]:
    """Remove ``.tmp-<name>-<pid>`` folders whose writer process is gone; returns their names."""
    removed = []
    for path in sorted(out.glob(f"{_TMP_PREFIX}*")):
        pid_text = path.name.rsplit("-", 1)[-1]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and _pid_alive(int(pid_text)):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


@dataclass(frozen=True)
class _Job:
    out: str
    family: str
    seed: int
    index: int
    objects: tuple[int, int]
    views: int
    size: int
    min_anomaly_pixels: int = 0
    background: str = "gradient"
    categories: tuple[str, ...] | None = None


def _init_worker() -> None:
    """One thread per worker process: the pool already uses the cores."""
    import torch

    torch.set_num_threads(1)


def _run_job(job: _Job) -> str:
    """Generate one scene into a temporary folder and rename it into place; returns its name."""
    spec = generate_scene(job.family, seed=job.seed, index=job.index, objects=job.objects,
                          views=job.views, size=job.size, min_anomaly_pixels=job.min_anomaly_pixels,
                          background=job.background, categories=job.categories)
    final = Path(job.out) / spec.name
    if final.exists():
        return spec.name
    tmp = Path(job.out) / f"{_TMP_PREFIX}{spec.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    render_and_write_scene(spec, tmp)
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another run finished it first
    return spec.name


def _write_json(out: Path, name: str, value) -> None:
    """Write ``out/name`` through a ``.tmp-<name>-<pid>`` file (removed by :func:`_clean_stale_tmp` if the
    writer dies) renamed into place."""
    tmp = out / f"{_TMP_PREFIX}{name}-{os.getpid()}"
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, out / name)


#: Settings added after generation.json existed: a file without them was generated with these values, and a
#: file is written without them where they have these values (older folders and new ones read the same).
SETTING_DEFAULTS = {"background": "gradient", "categories": None}


def _check_settings(out: Path, **settings) -> None:
    """Write ``out/generation.json`` (the generator version and ``settings``), or, where it exists, refuse
    settings that differ from it: finishing a dataset with other arguments would mix two kinds of scenes.
    A folder written before the file existed gets it now (its scenes cannot be checked). A setting of
    :data:`SETTING_DEFAULTS` is compared with its default where the file or the call lacks it."""
    from oddsparse.data.synth import GENERATOR_VERSION as version

    wanted = {"generator_version": version, **settings}
    path = out / SETTINGS_FILE
    if path.is_file():
        try:
            found = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not a readable settings file ({error})") from error
        if not isinstance(found, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(found).__name__}")
        keys = [*wanted, *(k for k in SETTING_DEFAULTS if k not in wanted)]
        there = {k: found.get(k, SETTING_DEFAULTS.get(k, "missing")) for k in keys}
        asked = {k: wanted.get(k, SETTING_DEFAULTS.get(k)) for k in keys}
        changed = [k for k in keys if there[k] != asked[k]]
        if changed:
            detail = ", ".join(f"{k}: {there[k]!r} there, {asked[k]!r} asked" for k in changed)
            raise ValueError(f"{path}: this dataset was generated with other settings ({detail}); "
                             f"generate into another folder")
        return
    _write_json(out, SETTINGS_FILE, {k: v for k, v in wanted.items() if SETTING_DEFAULTS.get(k, object()) != v})


def generate_dataset(out: str | os.PathLike, family: str, scenes: int, seed: int, *,
                     objects: tuple[int, int] = (3, 12), views: int = 20, size: int = 256, workers: int = 1,
                     progress: bool = True, min_anomaly_pixels: int = 0, background: str = "gradient",
                     categories=None) -> list[Path]:
    """Generate (or finish) a dataset of ``scenes`` scenes in ``out``; returns the scene folders.

    Deterministic in the arguments (scene ``i`` depends only on ``(seed, i)`` and the sizes), parallel
    over scenes with ``workers`` processes, resumable: finished scene folders are kept, stale
    temporary folders are removed. Writes ``splits.json`` once every scene exists, and ``generation.json``
    (the arguments that shape the scenes and the generator version) first: finishing a folder with
    other ones raises ``ValueError`` naming the file and the fields (``scenes`` may grow).
    ``min_anomaly_pixels``, ``background``: see :func:`~oddsparse.data.synth.scene.generate_scene` (0: not
    checked; ``"gradient"``, the sky gradient). ``generation.json`` records ``background`` only where it is not
    the gradient, so folders generated before the option read as gradient ones (:data:`SETTING_DEFAULTS`).
    ``categories`` (toys): the categories drawn from (:func:`~oddsparse.data.synth.shapes.toy_categories`; None,
    the default ten, is not recorded; ``splits.json`` names the seen and unseen ones).

    With ``workers > 1`` scenes are made in ``spawn`` processes: call this from a script under an
    ``if __name__ == "__main__":`` guard.

    Example:
        >>> folders = generate_dataset("data/toys", "toys", scenes=100, seed=0, workers=2)  # doctest: +SKIP
        >>> folders[0].name  # doctest: +SKIP
        'mug_0000'
    """
    if family not in ("parts", "toys"):
        raise ValueError(f"family must be 'parts' or 'toys', got {family!r}")
    if scenes < 0:
        raise ValueError(f"scenes must be >= 0, got {scenes}")
    # every argument checked before the folder and its generation.json exist: a refused call writes nothing
    if min_anomaly_pixels < 0:
        raise ValueError(f"min_anomaly_pixels must be >= 0, got {min_anomaly_pixels}")
    from oddsparse.data.synth.scene import BACKGROUNDS

    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")
    objects = (int(objects[0]), int(objects[1]))
    if not 1 <= objects[0] <= objects[1]:
        raise ValueError(f"objects must be a range (low, high) with 1 <= low <= high, got {objects!r}")
    if views < 1 or size < 8:
        raise ValueError(f"views must be >= 1 and size >= 8, got views={views}, size={size}")
    from oddsparse.data.synth.shapes import toy_categories

    categories = toy_categories(categories, family=family)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(out)
    _check_settings(out, family=family, seed=int(seed), objects=list(objects), views=int(views), size=int(size),
                    min_anomaly_pixels=int(min_anomaly_pixels), background=background,
                    categories=None if categories is None else list(categories))
    names = [scene_name(family, i, pick_category(family, seed, i, categories)) for i in range(scenes)]
    todo = [_Job(str(out), family, int(seed), i, objects, int(views), int(size), int(min_anomaly_pixels), background,
                 categories) for i, name in enumerate(names) if not (out / name).is_dir()]
    from tqdm.auto import tqdm

    bar = tqdm(total=scenes, initial=scenes - len(todo), desc=f"generate {family}", unit="scene",
               disable=not progress)
    try:
        if workers <= 1 or len(todo) <= 1:
            for job in todo:
                _run_job(job)
                bar.update(1)
        else:
            context = multiprocessing.get_context("spawn")
            with context.Pool(min(workers, len(todo)), initializer=_init_worker) as pool:
                for _ in pool.imap_unordered(_run_job, todo):
                    bar.update(1)
    finally:
        bar.close()
    splits = dataset_splits(family, scenes, seed, categories=categories)
    _write_json(out, SPLITS_FILE, splits)
    return [out / name for name in names]
