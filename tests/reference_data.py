"""Helpers for the data tests: the real sample scene and small edited copies of it.

Copies are written to pytest's tmp_path (never into the repository).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional, Sequence

import pytest

SAMPLE = (Path(__file__).resolve().parents[1] / "../shared/data/toysad_sample/banana_028-sample").resolve()


def require_sample() -> Path:
    if not SAMPLE.is_dir():
        pytest.skip(f"real sample scene not found at {SAMPLE} (needs ../shared/data next to the repo)")
    return SAMPLE


def sample_metadata() -> dict:
    return json.loads((require_sample() / "scene3d.metadata.json").read_text())


def copy_scene(dst: Path, views: Sequence[int], num_poses: Optional[int] = None,
               drop_objects: Sequence[str] = ()) -> Path:
    """Copy the sample scene to ``dst`` with only the files of ``views``.

    ``num_poses`` trims ``camera.poses`` to the first ``num_poses`` (default: keep all 20 and copy
    only some views' files). ``drop_objects`` removes objects (metadata entry and mask folder).
    """
    src = require_sample()
    dst.mkdir(parents=True)
    meta = json.loads((src / "scene3d.metadata.json").read_text())
    if num_poses is not None:
        meta["camera"]["poses"] = meta["camera"]["poses"][:num_poses]
    kept = [i for i, obj in enumerate(meta["objects"]) if obj["name"] not in drop_objects]
    meta["objects"] = [meta["objects"][i] for i in kept]
    (dst / "scene3d.metadata.json").write_text(json.dumps(meta))
    meta2d = json.loads((src / "scene2d.metadata.json").read_text())
    meta2d["blend_paths"] = [meta2d["blend_paths"][i] for i in kept]
    meta2d["anomaly_labels"] = [meta2d["anomaly_labels"][i] for i in kept]
    (dst / "scene2d.metadata.json").write_text(json.dumps(meta2d))
    names = [obj["name"] for obj in meta["objects"]] + ["floor_object"]
    for sub in ("RGB", "depth_exr", *[f"segmentations/{n}" for n in names]):
        (dst / sub).mkdir(parents=True)
    for v in views:
        shutil.copyfile(src / "RGB" / f"{v:04d}.png", dst / "RGB" / f"{v:04d}.png")
        shutil.copyfile(src / "depth_exr" / f"{v:04d}.exr", dst / "depth_exr" / f"{v:04d}.exr")
        for n in names:
            shutil.copyfile(src / "segmentations" / n / f"{n}_{v:04d}.png",
                            dst / "segmentations" / n / f"{n}_{v:04d}.png")
    return dst
