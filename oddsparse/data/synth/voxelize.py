"""Ground-truth occupancy of generated objects on voxel lattices: what a perfect scene model could hold.

Three oracles, all on the cell centres of a :class:`~oddsparse.geometry.grid.VoxelGrid` (usually a
fine one, averaged down to coarser voxels with :func:`block_mean`):

- :func:`solid_occupancy`: whether each centre lies inside a closed mesh placed in the world, by
  ray parity along one vertical ray per lattice column (the hits along a column are sorted once and
  every centre of the column counts the hits below it; odd = inside).
- :func:`silhouette_occupancy`: the visual hull of per-view foreground masks at the centres (a
  centre survives when every view that sees it shows foreground there), the carving rule of
  :func:`~oddsparse.geometry.carving.carve_occupancy` with one sample point per cell: what carving
  alone keeps at a given image size. Concavities seen in no silhouette (a crack in a top face) stay
  filled.
- :func:`depth_occupancies`: space carving with per-view depth maps (a centre seen in front of its
  pixel's surface is free space): what perfect depth of the input views allows at an image size.
- :func:`surface_colours`: the colour the views show at each centre that lies on a surface they see (the
  shading and texture a scene model reading the views' colour could hold, where geometry ends).

Example:
    >>> import trimesh
    >>> grid = VoxelGrid(shape=(4, 4, 4), voxel_size=0.05, origin=(-0.1, -0.1, -0.1))
    >>> inside = solid_occupancy(trimesh.creation.box((0.1, 0.1, 0.1)), np.eye(4), grid)
    >>> int(inside.sum())  # the 2 x 2 x 2 cells whose centres lie in the 10 cm cube at the origin
    8
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import trimesh

from oddsparse.geometry.grid import VoxelGrid

__all__ = ["solid_occupancy", "silhouette_occupancy", "silhouette_occupancies", "depth_occupancies",
           "depth_observations", "surface_colours", "block_mean", "cell_centers"]


def cell_centers(grid: VoxelGrid) -> np.ndarray:
    """(X, Y, Z, 3) float64 world positions of the grid's cell centres."""
    axes = [grid.origin[a] + (np.arange(grid.shape[a]) + 0.5) * grid.voxel_size for a in range(3)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def solid_occupancy(mesh: trimesh.Trimesh, object_to_world: np.ndarray, grid: VoxelGrid) -> np.ndarray:
    """(X, Y, Z) bool: whether each cell centre of ``grid`` lies inside ``mesh`` placed by ``object_to_world``.

    ``mesh`` must be closed (watertight, not self-intersecting: e.g. the manifold union of an object's
    parts); ``object_to_world`` (4, 4) is a rigid transform. One ray per (x, y) column is cast in the
    object frame (embree when installed) and a centre is inside when an odd number of the column's
    hits lies below it.
    """
    matrix = np.asarray(object_to_world, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"solid_occupancy: object_to_world must be (4, 4), got {matrix.shape}")
    if not mesh.is_watertight:
        raise ValueError("solid_occupancy: the mesh is not watertight (ray parity needs a closed surface)")
    X, Y, Z = grid.shape
    centers = cell_centers(grid)
    below = grid.origin[2] - grid.voxel_size  # every ray starts a voxel under the grid
    origins_world = np.concatenate([centers[:, :, 0, :2].reshape(-1, 2), np.full((X * Y, 1), below)], axis=1)
    rotation, translation = matrix[:3, :3], matrix[:3, 3]
    origins = (origins_world - translation) @ rotation  # world -> object frame (rows: R^T (p - t))
    direction = rotation[2]  # world +z in the object frame
    directions = np.broadcast_to(direction, origins.shape).copy()
    locations, ray_index, _ = mesh.ray.intersects_location(origins, directions, multiple_hits=True)
    t = np.einsum("ij,j->i", locations - origins[ray_index], direction)  # height above the ray start
    span = grid.voxel_size * (Z + 2)
    keys = np.sort(ray_index * span + np.clip(t, 0.0, span * (1 - 1e-9)))
    heights = (np.arange(Z) + 1.5) * grid.voxel_size  # centre heights above the ray start
    queries = (np.arange(X * Y)[:, None] * span + heights[None]).reshape(-1)
    hits_below = np.searchsorted(keys, queries) - np.searchsorted(keys, np.repeat(np.arange(X * Y) * span, Z))
    return (hits_below % 2 == 1).reshape(X, Y, Z)


def silhouette_occupancy(masks, K, world_to_cam, grid: VoxelGrid) -> np.ndarray:
    """(X, Y, Z) bool visual hull at the cell centres of ``grid``.

    Args:
        masks: (V, H, W) bool foreground masks. K: (V, 3, 3) or (3, 3) intrinsics for (H, W).
        world_to_cam: (V, 4, 4) OpenCV extrinsics.
    A view *sees* a centre that projects inside its image in front of the camera (the pixel holding
    the point, index + 0.5 centres); the centre survives when at least one view sees it and every
    view that sees it shows foreground.
    """
    return silhouette_occupancies([masks], [K], world_to_cam, grid)[0]


def silhouette_occupancies(mask_sets, Ks, world_to_cam, grid: VoxelGrid) -> list[np.ndarray]:
    """Visual hulls of several mask sets of the same V cameras (e.g. one per image size), one per set.

    Each ``mask_sets[i]`` (V, H_i, W_i) goes with intrinsics ``Ks[i]`` ((3, 3) or (V, 3, 3)); the cell
    centres are moved into each camera frame once for all sets. Same rule as
    :func:`silhouette_occupancy`.
    """
    sets = _check_sets("silhouette_occupancies", mask_sets, Ks, world_to_cam, torch.bool)
    points = torch.from_numpy(cell_centers(grid).reshape(-1, 3))
    seen = [torch.zeros(points.shape[0], dtype=torch.int64) for _ in sets]
    foreground = [torch.zeros(points.shape[0], dtype=torch.int64) for _ in sets]
    for i, view, u, v, inside, _ in _projections(sets, world_to_cam, points):
        seen[i] += inside
        foreground[i] += _pixel_values(sets[i][0][view], u, v) & inside
    return [((s > 0) & (f == s)).reshape(grid.shape).numpy() for s, f in zip(seen, foreground)]


def depth_occupancies(depth_sets, Ks, world_to_cam, grid: VoxelGrid, *, tolerance_px: float = 0.5) -> list[np.ndarray]:
    """Space carving with depth maps: (X, Y, Z) bool per depth set, the centres no view sees in free space.

    Each ``depth_sets[i]`` (V, H_i, W_i) holds z-depths of the first surface per pixel (``inf`` where
    the ray hits nothing) for intrinsics ``Ks[i]``. A view that sees a centre (as in
    :func:`silhouette_occupancy`) carves it when the centre's z-depth is less than its pixel's depth
    minus ``tolerance_px`` pixels' footprint at that depth (``tolerance_px * z / fx``: a centre just
    under a slanted surface is not carved because its pixel's centre ray met the surface nearer). The
    centre survives when some view sees it and none carves it: what perfect depth maps of these views
    allow, the surfaces they observe with whatever lies behind them; concavities seen in some view are
    carved, unlike in the visual hull.
    """
    return [kept for kept, _ in _depth_carving("depth_occupancies", depth_sets, Ks, world_to_cam, grid, tolerance_px)]


def depth_observations(depth_sets, Ks, world_to_cam, grid: VoxelGrid, *,
                       tolerance_px: float = 0.5) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per depth set, ``(kept, observed)`` (X, Y, Z) bool: :func:`depth_occupancies`' cells, and the cells
    whose state some view determines: seen in front of its pixel's surface or within the tolerance
    behind it (``kept & observed`` is the observed surface shell; ``kept & ~observed`` what lies
    hidden behind the surfaces of every view)."""
    return _depth_carving("depth_observations", depth_sets, Ks, world_to_cam, grid, tolerance_px)


def surface_colours(image_sets, depth_sets, Ks, world_to_cam, grid: VoxelGrid, *, tolerance_px: float = 0.5,
                    masks=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per view set, the colour the views show on the surfaces through the cell centres.

    A view shows a centre's colour when it sees the centre (as in :func:`silhouette_occupancy`) and the
    centre's z-depth lies within ``tolerance_px`` pixels' footprint (``tolerance_px * z / fx``) of its
    pixel's depth, on either side: the centre is on the surface that pixel shows. With ``masks`` (per set,
    (V, H, W) bool) only pixels inside the mask count (e.g. the objects' pixels, not the floor's).

    Args:
        image_sets: per set, (V, H, W, 3) colours (any numeric type; returned as given, e.g. 0-255).
        depth_sets: per set, (V, H, W) z-depths of the first surface (``inf`` where nothing is hit).
        Ks: per set, (3, 3) or (V, 3, 3) intrinsics. world_to_cam: (V, 4, 4).
    Returns:
        Per set ``(colour, views)``: (3, X, Y, Z) float32 mean colour over the views that show each centre
        (0 where none does) and (X, Y, Z) int32 number of those views.
    """
    if tolerance_px < 0:
        raise ValueError(f"surface_colours: tolerance_px must be >= 0, got {tolerance_px}")
    if len(image_sets) != len(depth_sets):
        raise ValueError(f"surface_colours: {len(image_sets)} image sets for {len(depth_sets)} depth sets")
    sets = _check_sets("surface_colours", depth_sets, Ks, world_to_cam, torch.float64)
    images = []
    for i, (image, (depth, _)) in enumerate(zip(image_sets, sets)):
        image = torch.as_tensor(np.asarray(image, dtype=np.float64))
        if image.shape != (*depth.shape, 3):
            raise ValueError(f"surface_colours: image set {i} must be {(*depth.shape, 3)} like its depths, "
                             f"got {tuple(image.shape)}")
        images.append(image)
    if masks is not None:
        if len(masks) != len(sets):
            raise ValueError(f"surface_colours: {len(masks)} mask sets for {len(sets)} depth sets")
        masks = [torch.as_tensor(np.asarray(m, dtype=bool)) for m in masks]
        for i, (mask, (depth, _)) in enumerate(zip(masks, sets)):
            if mask.shape != depth.shape:
                raise ValueError(f"surface_colours: mask set {i} must be {tuple(depth.shape)}, got {tuple(mask.shape)}")
    points = torch.from_numpy(cell_centers(grid).reshape(-1, 3))
    totals = [torch.zeros(points.shape[0], 3, dtype=torch.float64) for _ in sets]
    counts = [torch.zeros(points.shape[0], dtype=torch.int32) for _ in sets]
    for i, view, u, v, inside, z in _projections(sets, world_to_cam, points):
        depth_map, K = sets[i]
        band = tolerance_px * z / K[view, 0, 0]
        shows = inside & ((z - _pixel_values(depth_map[view], u, v)).abs() <= band)
        if masks is not None:
            shows &= _pixel_values(masks[i][view], u, v)
        H, W = depth_map.shape[1:]
        pixel = v.clamp(0, H - 1) * W + u.clamp(0, W - 1)
        totals[i] += images[i][view].reshape(-1, 3)[pixel] * shows[:, None]
        counts[i] += shows.to(torch.int32)
    return [((t / c.clamp(min=1)[:, None]).T.reshape(3, *grid.shape).numpy().astype(np.float32),
             c.reshape(grid.shape).numpy()) for t, c in zip(totals, counts)]


def _depth_carving(name: str, depth_sets, Ks, world_to_cam, grid: VoxelGrid,
                   tolerance_px: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`depth_observations`; errors name the public function ``name``."""
    if tolerance_px < 0:
        raise ValueError(f"{name}: tolerance_px must be >= 0, got {tolerance_px}")
    sets = _check_sets(name, depth_sets, Ks, world_to_cam, torch.float64)
    points = torch.from_numpy(cell_centers(grid).reshape(-1, 3))
    seen = [torch.zeros(points.shape[0], dtype=torch.bool) for _ in sets]
    carved = [torch.zeros(points.shape[0], dtype=torch.bool) for _ in sets]
    observed = [torch.zeros(points.shape[0], dtype=torch.bool) for _ in sets]
    for i, view, u, v, inside, z in _projections(sets, world_to_cam, points):
        depth_map, K = sets[i]
        surface = _pixel_values(depth_map[view], u, v)
        band = tolerance_px * z / K[view, 0, 0]
        seen[i] |= inside
        carved[i] |= inside & (z < surface - band)
        observed[i] |= inside & (z < surface + band)
    return [((s & ~c).reshape(grid.shape).numpy(), o.reshape(grid.shape).numpy())
            for s, c, o in zip(seen, carved, observed)]


def _check_sets(name: str, view_sets, Ks, world_to_cam, dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per set ``(maps (V, H, W) of dtype, K (V, 3, 3) float64)``, checked against the V cameras."""
    if len(view_sets) != len(Ks):
        raise ValueError(f"{name}: {len(view_sets)} view sets for {len(Ks)} intrinsics")
    world_to_cam = np.asarray(world_to_cam)
    if world_to_cam.ndim != 3 or world_to_cam.shape[1:] != (4, 4):
        raise ValueError(f"{name}: world_to_cam must be (V, 4, 4), got {world_to_cam.shape}")
    views = world_to_cam.shape[0]
    sets = []
    for i, (maps, K) in enumerate(zip(view_sets, Ks)):
        maps = torch.as_tensor(np.asarray(maps)).to(dtype)
        if maps.dim() != 3 or maps.shape[0] != views:
            raise ValueError(f"{name}: set {i} must be ({views}, H, W) for the {views} cameras, "
                             f"got {tuple(maps.shape)}")
        K = torch.as_tensor(np.asarray(K, dtype=np.float64)).expand(views, 3, 3)
        if not torch.equal(K[:, 2], K.new_tensor([0.0, 0.0, 1.0]).expand(views, 3)) or (K[:, 1, 0] != 0).any():
            raise ValueError(f"{name}: intrinsics {i} must be upper triangular with last row (0, 0, 1)")
        sets.append((maps, K))
    return sets


def _projections(sets, world_to_cam, points: torch.Tensor):
    """Yield ``(set, view, u, v, inside, z)`` for every view and set: the pixel (u, v) holding each point
    (index + 0.5 centres), whether the view sees it (in front, inside the image) and its z-depth. Each
    view's camera frame is computed once for all sets."""
    world_to_cam = torch.as_tensor(np.asarray(world_to_cam, dtype=np.float64))
    for view in range(world_to_cam.shape[0]):
        cam = points @ world_to_cam[view, :3, :3].T + world_to_cam[view, :3, 3]
        z = cam[:, 2]
        front = z > 1e-9
        x, y = cam[:, 0] / z.clamp_min(1e-9), cam[:, 1] / z.clamp_min(1e-9)  # normalised image plane
        for i, (maps, K) in enumerate(sets):
            H, W = maps.shape[1:]
            k = K[view]
            u = torch.floor(k[0, 0] * x + k[0, 1] * y + k[0, 2]).long()  # K's last row is (0, 0, 1)
            v = torch.floor(k[1, 1] * y + k[1, 2]).long()
            yield i, view, u, v, front & (u >= 0) & (u < W) & (v >= 0) & (v < H), z


def _pixel_values(image: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(P,) values of the (H, W) ``image`` at pixels (u, v), clamped to the image (mask with ``inside``)."""
    H, W = image.shape
    return image.reshape(-1)[v.clamp(0, H - 1) * W + u.clamp(0, W - 1)]


def block_mean(occupancy: np.ndarray, factor: int) -> np.ndarray:
    """(X/f, Y/f, Z/f) float32 fraction of occupied fine cells in each f x f x f block (sizes divisible by f)."""
    if factor < 1 or any(s % factor for s in occupancy.shape):
        raise ValueError(f"block_mean: shape {occupancy.shape} is not divisible by factor {factor}")
    volume = torch.from_numpy(np.ascontiguousarray(occupancy, dtype=np.float32))[None, None]
    return F.avg_pool3d(volume, factor)[0, 0].numpy()
