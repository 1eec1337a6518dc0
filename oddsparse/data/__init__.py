"""Readers of the published scene format, splits and the scene Dataset.

The synthetic generator lives in the subpackage ``oddsparse.data.synth``, imported on first use
(``osp.data.synth`` or ``import oddsparse.data.synth``), so that reading scenes does not pull in the
generator's dependencies (trimesh, embreex, manifold3d).
"""
import importlib
from oddsparse.data.dataset import UNSEEN_CATEGORIES, SceneDataset, collate_scenes, list_scene_folders
from oddsparse.data.scene_io import SceneFormatError, check_scene, observed_boxes, read_scene, read_scene_metadata

__all__ = ["read_scene", "read_scene_metadata", "check_scene", "observed_boxes", "SceneFormatError", "SceneDataset",
           "collate_scenes", "list_scene_folders", "UNSEEN_CATEGORIES"]


def __getattr__(name: str):
    """``oddsparse.data.synth`` on first access (PEP 562), not at ``import oddsparse``."""
    if name == "synth":
        return importlib.import_module("oddsparse.data.synth")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
