"""Volume rendering of sparse voxel fields.

:mod:`~oddsparse.geometry.sampling` reads sparse voxels at arbitrary points (trilinear, no
densification); :mod:`~oddsparse.renderers.raymarch` samples rays inside the grid, skips empty
space and composites emission-absorption (torch, or PyTorch3D's raymarcher when installed).
"""
from oddsparse.renderers.raymarch import (
    OccupancyGrid,
    PackedSamples,
    RaySamples,
    RenderedRays,
    composite_emission_absorption,
    composite_packed,
    composite_pytorch3d,
    density_to_alpha,
    occupied_samples,
    point_transmittance,
    roi_view_samples,
    rays_aabb_intersect,
    render_rays,
    render_views,
    sample_along_rays,
)
from oddsparse.geometry.sampling import VoxelHash, sample_sparse_trilinear, trilinear_corners

__all__ = [
    "VoxelHash",
    "trilinear_corners",
    "sample_sparse_trilinear",
    "rays_aabb_intersect",
    "RaySamples",
    "sample_along_rays",
    "PackedSamples",
    "OccupancyGrid",
    "occupied_samples",
    "density_to_alpha",
    "composite_emission_absorption",
    "composite_packed",
    "composite_pytorch3d",
    "RenderedRays",
    "render_rays",
    "render_views",
    "point_transmittance",
    "roi_view_samples",
]
