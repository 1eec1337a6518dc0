"""Load the real sample scene for geometry tests (read_scene when available, else a plain reader)."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

SAMPLE = (Path(__file__).resolve().parents[2] / "../shared/data/toysad_sample/banana_028-sample").resolve()


@dataclass
class SampleScene:
    """Tensors of the sample scene: masks (O, V, H, W) bool (objects only, no floor), depth (V, H, W)
    with inf background, K (V, 3, 3), world_to_cam (V, 4, 4), box center/size (O, 3), rotation (O, 3, 3)."""

    masks: torch.Tensor
    depth: torch.Tensor
    K: torch.Tensor
    world_to_cam: torch.Tensor
    center: torch.Tensor
    size: torch.Tensor
    rotation: torch.Tensor


def _plain_reader(path: Path) -> SampleScene:
    import OpenEXR
    from PIL import Image

    meta = json.loads((path / "scene3d.metadata.json").read_text())
    views = sorted(p.stem for p in (path / "RGB").glob("*.png"))
    K = torch.tensor(meta["camera"]["K"], dtype=torch.float64).expand(len(views), 3, 3)
    world_to_cam = torch.tensor([pose["rotation"] for pose in meta["camera"]["poses"]], dtype=torch.float64)
    masks = []
    for obj in meta["objects"]:
        name = obj["name"]
        masks.append(np.stack([np.asarray(Image.open(path / "segmentations" / name / f"{name}_{v}.png"))[..., 0] > 127
                               for v in views]))
    depth = []
    for v in views:
        with OpenEXR.File(str(path / "depth_exr" / f"{v}.exr")) as exr:
            channels = exr.channels()
            key = "R" if "R" in channels else next(iter(channels))
            pixels = np.asarray(channels[key].pixels, dtype=np.float64)
            depth.append(pixels[..., 0] if pixels.ndim == 3 else pixels)
    depth = torch.from_numpy(np.stack(depth))
    depth = torch.where(depth > 1e9, torch.full_like(depth, float("inf")), depth)
    rotation = torch.tensor([obj["rotation_matrix"] for obj in meta["objects"]], dtype=torch.float64)[:, :3, :3]
    return SampleScene(masks=torch.from_numpy(np.stack(masks)), depth=depth, K=K.clone(), world_to_cam=world_to_cam,
                       center=torch.tensor([obj["location"] for obj in meta["objects"]], dtype=torch.float64),
                       size=torch.tensor([obj["bbox"][1] for obj in meta["objects"]], dtype=torch.float64),
                       rotation=rotation)


def load_sample_scene() -> SampleScene:
    """The sample scene (read once per test process), or pytest.skip when the data folder is absent."""
    if not SAMPLE.is_dir():
        pytest.skip(f"real sample scene not found at {SAMPLE} (needs ../shared/data next to the repo)")
    return _load(str(SAMPLE))


@functools.lru_cache(maxsize=1)
def _load(path: str) -> SampleScene:
    try:
        from oddsparse.data import read_scene
    except ImportError:
        return _plain_reader(Path(path))
    scene = read_scene(Path(path))

    def tensor(x, dtype=None):
        t = torch.as_tensor(np.asarray(x)) if not torch.is_tensor(x) else x
        return t.to(dtype) if dtype is not None else t

    depth = tensor(scene.depth, torch.float64)
    return SampleScene(masks=tensor(scene.masks).bool(), depth=depth, K=tensor(scene.K, torch.float64),
                       world_to_cam=tensor(scene.world_to_cam, torch.float64),
                       center=tensor(scene.boxes.center, torch.float64), size=tensor(scene.boxes.size, torch.float64),
                       rotation=tensor(scene.boxes.rotation, torch.float64))
