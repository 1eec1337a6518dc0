"""Helpers for the evaluation / prediction tests: a tiny generated dataset, a tiny detector checkpoint,
and an oracle detector that returns the ground-truth boxes (a reference that shares no model code).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from oddsparse.geometry.boxes import YawBoxes, as_yaw_boxes

TINY_SCENES = 2
TINY_VIEWS = 6
TINY_SIZE = 64

# A small grid over the generated scenes' floor (objects within ~0.5 m of the origin); every axis is
# divisible by 8 as the 4-scale U-Net needs.
SCENE_KWARGS = {"grid": {"shape": [24, 24, 8], "voxel_size": 0.05, "origin": [-0.6, -0.6, 0.0]},
                "encoder_depth": 18, "feature_channels": 8, "backbone_channels": [8, 16, 16, 16], "feature_dim": 16}
DETECTOR_KWARGS = {"variant": "full", "dim": 16, "heads": 2, "blocks": 1, "k": 4, "roi_size": 4}


def small_detector(**kwargs):
    """The small float64 eval-mode detector of SCENE_KWARGS / DETECTOR_KWARGS (seeded), with ``kwargs`` changed."""
    from oddsparse.models.detector import build_detector

    torch.manual_seed(0)
    return build_detector(SCENE_KWARGS, dict(DETECTOR_KWARGS, **kwargs)).double().eval()


def random_object_volumes(detector, count: int, seed: int):
    """(count, C_v + C_beta + 1, r, r, r) float64 object volumes: Gaussian features, opacity in [0, 1)."""
    g = torch.Generator().manual_seed(seed)
    channels = detector.scene_model.volume_channels + detector.scene_model.fields.feature_dim
    r = detector.roi_size
    feats = torch.randn(count, channels, r, r, r, generator=g, dtype=torch.float64)
    opacity = torch.rand(count, 1, r, r, r, generator=g, dtype=torch.float64)
    return torch.cat([feats, opacity], dim=1)


def tiny_dataset(base: Path) -> Path:
    """Generate (once per pytest session: the generator keeps finished scenes) 2 parts scenes, 6 views, 64 px."""
    from oddsparse.data.synth import generate_dataset

    root = Path(base) / f"tiny-parts-{TINY_SIZE}px-{TINY_SCENES}-v{TINY_VIEWS}"
    generate_dataset(root, "parts", TINY_SCENES, seed=0, objects=(3, 4), views=TINY_VIEWS, size=TINY_SIZE,
                     progress=False)
    return root


def tiny_detector(seed: int = 0):
    """A randomly initialised small detector whose heads are biased so that it finds objects.

    Untrained, the foreground head predicts background everywhere and the density is below the box
    threshold; biasing the foreground logits and the density up makes it carve the views' common
    volume and box it, so every stage of the pipeline runs on non-empty data.
    """
    from oddsparse.models.detector import build_detector

    torch.manual_seed(seed)
    detector = build_detector(SCENE_KWARGS, DETECTOR_KWARGS)
    with torch.no_grad():
        detector.scene_model.foreground.layers[-1].bias.fill_(6.0)
        detector.scene_model.fields.density[-1].bias.fill_(10.0)
    return detector.eval()


@dataclass
class _TinyConfig:
    preset: str = "test"
    family: str = "parts"


def save_tiny_checkpoint(path: Path, data_root: Path, detector=None, detector_kwargs: dict | None = None) -> Path:
    """Save a detector (built from ``detector_kwargs``, default :data:`DETECTOR_KWARGS`) in the training
    contract's checkpoint format."""
    from oddsparse.utils.checkpoint import rng_state, save_checkpoint

    detector = detector or tiny_detector()
    optimizer = torch.optim.Adam(detector.parameters(), lr=1e-4)
    save_checkpoint(path, {"config": asdict(_TinyConfig()), "scene_kwargs": SCENE_KWARGS,
                           "detector_kwargs": detector_kwargs or DETECTOR_KWARGS, "model": detector.state_dict(),
                           "optimizer": optimizer.state_dict(), "stage": 2, "step": 0, "rng": rng_state(),
                           "data_root": str(Path(data_root).resolve()), "family": "parts",
                           "image_size": [TINY_SIZE, TINY_SIZE], "teacher": {"kind": "sift"}})
    return path


@dataclass
class _OracleDetection:
    boxes: YawBoxes
    scene_index: torch.Tensor
    scores: torch.Tensor


class OracleDetector:
    """Returns the GT boxes of the scene whose first input camera it recognises, with chosen scores.

    Args:
        scenes: {name: (first view's world_to_cam (4, 4), GT boxes, scores (O,))}; boxes are any
            form :func:`as_yaw_boxes` accepts. ``drop``: {name: GT object indices to leave out}.
        ``flip_below``: with fewer input views than this, every score ``s`` is returned as ``1 - s`` (so that
        a report's groups by number of views differ).
    Records the number of views of every call in ``calls``.
    """

    def __init__(self, scenes: dict, drop: dict | None = None, flip_below: int = 0):
        self.scenes = scenes
        self.drop = drop or {}
        self.flip_below = flip_below
        self.calls: list[tuple[str, int, torch.Tensor]] = []

    def __call__(self, images, K, world_to_cam):
        for name, (first_camera, boxes, scores) in self.scenes.items():
            if torch.allclose(world_to_cam[0, 0], first_camera, atol=1e-5):
                self.calls.append((name, world_to_cam.shape[1], world_to_cam[0].clone()))
                yaw = as_yaw_boxes(boxes)
                keep = torch.tensor([i not in self.drop.get(name, ()) for i in range(len(scores))])
                if world_to_cam.shape[1] < self.flip_below:
                    scores = 1.0 - scores
                return _OracleDetection(YawBoxes(yaw.center[keep], yaw.size[keep], yaw.yaw[keep]),
                                        torch.zeros(int(keep.sum()), dtype=torch.int64), scores[keep])
        raise AssertionError("oracle: unknown scene")


def tiny_checkpoint(tmp_path_factory, tmp_path: Path) -> tuple[Path, Path]:
    """``(root, checkpoint)``: the shared tiny dataset and an untrained :func:`tiny_detector` saved for it."""
    root = tiny_dataset(tmp_path_factory.getbasetemp())
    return root, save_tiny_checkpoint(tmp_path / "d.pt", root, tiny_detector())
