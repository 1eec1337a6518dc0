"""Geometry: conventions, cameras, voxel grids, unprojection, carving, boxes.

``conventions``, ``cameras`` and ``grid`` depend on nothing else in oddsparse; the operations
on sparse voxels (unprojection, carving, boxes, RoI sampling) build on
:class:`oddsparse.structures.SparseVoxels`.
"""
from oddsparse.geometry import conventions
from oddsparse.geometry.cameras import *  # noqa: F401,F403
from oddsparse.geometry.cameras import __all__ as _cameras_all
from oddsparse.geometry.grid import VoxelGrid

__all__ = ["conventions", "VoxelGrid", *_cameras_all]
from oddsparse.geometry.unproject import project_visibility, sample_views, unproject_features  # noqa: E402
from oddsparse.geometry.carving import carve_occupancy, dilate_occupancy, voxel_sample_offsets  # noqa: E402
from oddsparse.geometry.boxes import (  # noqa: E402
    YawBoxes, box_intersection_3d, box_iou_3d, boxes_from_occupancy, consensus_boxes, match_boxes,
    merge_floating_clusters, min_area_rectangle, nms_boxes, rotation_to_yaw, yaw_boxes_to_corners, yaw_to_rotation,
)
from oddsparse.geometry.roi import roi_points, roi_sample  # noqa: E402
from oddsparse.geometry.sampling import VoxelHash, sample_sparse_trilinear  # noqa: E402

__all__ += ["project_visibility", "sample_views", "unproject_features", "carve_occupancy", "dilate_occupancy",
            "voxel_sample_offsets", "YawBoxes", "box_iou_3d", "box_intersection_3d", "boxes_from_occupancy",
            "consensus_boxes", "match_boxes", "merge_floating_clusters", "min_area_rectangle", "nms_boxes",
            "rotation_to_yaw", "yaw_boxes_to_corners", "yaw_to_rotation", "roi_points", "roi_sample", "VoxelHash",
            "sample_sparse_trilinear"]
