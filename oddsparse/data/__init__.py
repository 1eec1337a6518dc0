"""Readers of the published scene format, splits and the scene Dataset.

The synthetic generator lives in the subpackage ``oddsparse.data.synth`` (imported explicitly;
not loaded here so that reading scenes does not pull in the generator's dependencies).
"""
from oddsparse.data.dataset import UNSEEN_CATEGORIES, SceneDataset, collate_scenes, list_scene_folders
from oddsparse.data.scene_io import SceneFormatError, check_scene, observed_boxes, read_scene, read_scene_metadata

__all__ = ["read_scene", "read_scene_metadata", "check_scene", "observed_boxes", "SceneFormatError", "SceneDataset",
           "collate_scenes", "list_scene_folders", "UNSEEN_CATEGORIES"]
