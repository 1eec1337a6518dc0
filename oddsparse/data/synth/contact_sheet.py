"""Contact sheets: a PNG grid of a scene's views with anomalous objects outlined (red) and normal ones (green).

Reads only the published folder format (``RGB/``, ``segmentations/``, ``scene3d.metadata.json``), so it
works on generated and on published scenes alike.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from oddsparse.data.scene_io import SceneFormatError, load_json_object
from oddsparse.utils.checkpoint import atomic_write
from oddsparse.utils.errors import InputError

__all__ = ["write_contact_sheet", "scene_contact_rows", "anomaly_kind_from_path"]

_RED = np.array([230, 20, 20], dtype=np.uint8)
_GREEN = np.array([20, 200, 60], dtype=np.uint8)
_KIND = re.compile(r"-([a-z]+)-\d+\.blend$")


def anomaly_kind_from_path(path: str) -> str | None:
    """Anomaly type named by a published blend path (``<shape>-<type>-<nnn>.blend``), else ``None``."""
    match = _KIND.search(os.path.basename(path))
    return match.group(1) if match else None


def _outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels of ``mask`` (H, W) bool that touch a pixel outside it (a ``width``-pixel inner border)."""
    inner = mask.copy()
    for _ in range(width):
        padded = np.pad(inner, 1, constant_values=False)
        inner = (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return mask & ~inner


def _view_image(scene: Path, view: str, objects: list[dict], outline_width: int) -> Image.Image:
    rgb = np.array(Image.open(scene / "RGB" / f"{view}.png").convert("RGB"))
    for obj in objects:
        name = obj["name"]
        mask_path = scene / "segmentations" / name / f"{name}_{view}.png"
        if not mask_path.exists():
            raise FileNotFoundError(f"{mask_path}: missing mask of object {name!r} (segmentations/{name})")
        mask = np.array(Image.open(mask_path))
        mask = (mask[..., 0] if mask.ndim == 3 else mask) > 127
        color = _RED if anomaly_kind_from_path(obj["path"]) else _GREEN
        rgb[_outline(mask, outline_width)] = color
    return Image.fromarray(rgb)


def scene_contact_rows(scene_dir: str | os.PathLike, views: list[int] | None = None, *,
                       outline_width: int = 1) -> tuple[list[Image.Image], str]:
    """Outlined view images of one scene and a caption (scene name and anomaly types)."""
    scene = Path(scene_dir)
    meta_path = scene / "scene3d.metadata.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: not a scene folder (no scene3d.metadata.json)")
    meta = load_json_object(meta_path)  # malformed or not an object: an error naming the file
    objects = meta.get("objects")
    if not isinstance(objects, list) or not all(isinstance(o, dict) and "name" in o and "path" in o for o in objects):
        raise SceneFormatError(meta_path, "objects", "missing, or not a list of objects with a name and a path")
    available = sorted(p.stem for p in (scene / "RGB").glob("*.png"))
    if not available:
        raise FileNotFoundError(f"{scene / 'RGB'}: no views")
    outside = [v for v in (views or []) if not 0 <= v < len(available)]
    if outside:
        raise InputError(f"{scene}: views {outside} asked, but the scene stores {len(available)} (0..{len(available) - 1})")
    chosen = available if views is None else [available[v] for v in views]
    images = [_view_image(scene, view, objects, outline_width) for view in chosen]
    kinds = [k for k in (anomaly_kind_from_path(o["path"]) for o in objects) if k]
    caption = f"{scene.name}: {len(objects)} objects, anomalies: {', '.join(kinds) if kinds else 'none'}"
    return images, caption


def write_contact_sheet(scene_dirs, out: str | os.PathLike, *, views: list[int] | None = None,
                        columns: int = 5, outline_width: int = 1, caption_height: int = 14) -> Path:
    """Write a contact sheet PNG of one or more scenes; returns the PNG path.

    Args:
        scene_dirs: a scene folder or a list of them (one block of rows per scene).
        views: view indices to show (default: all views of a single scene, or 5 evenly spaced views
            per scene when several scenes are given).
        columns: images per row.
    """
    if columns < 1:
        raise InputError(f"columns must be >= 1, got {columns}")
    if isinstance(scene_dirs, (str, os.PathLike)):
        scene_dirs = [scene_dirs]
    scene_dirs = [Path(s) for s in scene_dirs]
    if views is None and len(scene_dirs) > 1:
        count = len(list((scene_dirs[0] / "RGB").glob("*.png")))
        # evenly over one turn; the last stored view nearly repeats the first (published orbit)
        span = max(count - 1, 1)
        views = sorted({int(i * span / columns) for i in range(columns)}) if count else None
    blocks = []
    for scene in scene_dirs:
        images, caption = scene_contact_rows(scene, views, outline_width=outline_width)
        blocks.append((images, caption))
    cell = max(im.size[0] for images, _ in blocks for im in images)
    cols = min(columns, max(len(images) for images, _ in blocks))
    heights = [caption_height + cell * ((len(images) + cols - 1) // cols) for images, _ in blocks]
    sheet = Image.new("RGB", (cols * cell, sum(heights)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    top = 0
    for (images, caption), height in zip(blocks, heights):
        draw.text((3, top + 1), caption, fill=(0, 0, 0))
        for i, image in enumerate(images):
            sheet.paste(image, ((i % cols) * cell, top + caption_height + (i // cols) * cell))
        top += height
    out = Path(out)
    atomic_write(out, lambda file: sheet.save(file, format="PNG"))
    return out
