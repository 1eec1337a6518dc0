"""Data that flows through oddsparse: sparse voxel tensors and scenes."""
from oddsparse.structures.scene import Boxes, Scene, SceneBatch
from oddsparse.structures.sparse import SparseVoxels

__all__ = ["SparseVoxels", "Boxes", "Scene", "SceneBatch"]
