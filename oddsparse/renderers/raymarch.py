"""Volume rendering of sparse voxel fields: ray sampling, empty-space skipping, compositing.

Pipeline for R rays (:func:`render_rays`):

1. :func:`sample_along_rays` clips each ray to the grid box and places S samples (intervals) on
   the clipped segment.
2. :func:`occupied_samples` keeps only the samples whose trilinear support touches an occupied
   voxel (one read of a dilated occupancy bitmap per sample, then an exact 8-corner check of the
   survivors), packed nerfacc-style (``ray_index`` per sample). A dropped sample would have read 8
   absent voxels, i.e. zero density, so dropping it changes nothing: empty space costs nothing.
3. :func:`~oddsparse.geometry.sampling.sample_sparse_trilinear` reads density, colour and
   features at the kept samples; :func:`density_to_alpha` turns density into opacity per interval.
4. Emission-absorption compositing: :func:`composite_packed` (torch, variable samples per ray) or
   PyTorch3D's ``EmissionAbsorptionRaymarcher`` on the padded (R, S) layout when pytorch3d is
   installed (``backend="auto" | "torch" | "pytorch3d"``). Both follow PyTorch3D's semantics:
   ``T_i = prod_{j<i} (1 + eps - alpha_j)``, ``w_i = alpha_i T_i``, value ``sum_i w_i v_i``.

Ray parameters ``t`` are in units of ``directions``: with rays from
:func:`oddsparse.geometry.cameras.pixel_rays` a step ``t`` reaches z-depth ``t``, so the rendered
depth is a z-depth. Interval lengths in metres (for ``sigma * delta``) use ``|directions|``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from oddsparse._backends import require_pytorch3d, resolve_backend
from oddsparse.geometry.boxes import as_yaw_boxes
from oddsparse.geometry.cameras import camera_centers, pixel_rays, scale_intrinsics
from oddsparse.geometry.grid import VoxelGrid
from oddsparse.ops.scatter import scatter_sum
from oddsparse.geometry.roi import roi_points
from oddsparse.geometry.sampling import VoxelHash, sample_sparse_trilinear, trilinear_corners
from oddsparse.geometry.unproject import sample_views
from oddsparse.structures.sparse import SparseVoxels

__all__ = [
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


# ---------------------------------------------------------------------------------------------- rays
def rays_aabb_intersect(origins: Tensor, directions: Tensor, bounds: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Slab test of rays against an axis-aligned box.

    Args:
        origins, directions: (R, 3).
        bounds: (2, 3) min and max corners (``VoxelGrid.bounds()``).
    Returns:
        ``(t_near, t_far, hit)``: (R,) entry and exit parameters (``t_near`` clamped to >= 0, the
        ray starts at its origin) and (R,) bool, True when the ray crosses the box in front of it.

    Example:
        >>> o = torch.tensor([[-2.0, 0.5, 0.5]]); d = torch.tensor([[1.0, 0.0, 0.0]])
        >>> rays_aabb_intersect(o, d, torch.tensor([[0.0, 0, 0], [1.0, 1, 1]]))
        (tensor([2.]), tensor([3.]), tensor([True]))
    """
    tiny = torch.finfo(directions.dtype).tiny ** 0.5
    safe = torch.where(directions.abs() < tiny, torch.full_like(directions, tiny), directions)
    inverse = 1.0 / safe
    t0 = (bounds[0] - origins) * inverse  # (R, 3)
    t1 = (bounds[1] - origins) * inverse
    t_near = torch.minimum(t0, t1).amax(dim=-1).clamp(min=0.0)
    t_far = torch.maximum(t0, t1).amin(dim=-1)
    hit = t_far > t_near
    return t_near, t_far, hit


@dataclass
class RaySamples:
    """S intervals per ray on the part of each ray inside the grid.

    Attributes:
        t_starts, t_ends: (R, S) interval bounds along the rays (0 for rays that miss).
        t: (R, S) sample position in each interval (midpoint, or uniform in it when stratified).
        deltas: (R, S) interval lengths in world units (``(t_end - t_start) * |direction|``).
        hit: (R,) bool, the ray crosses the grid.
    """

    t_starts: Tensor
    t_ends: Tensor
    t: Tensor
    deltas: Tensor
    hit: Tensor


def sample_along_rays(origins: Tensor, directions: Tensor, grid: VoxelGrid, num_samples: int, *,
                      near: float | None = None, far: float | None = None, stratified: bool = False,
                      generator: torch.Generator | None = None) -> RaySamples:
    """Split each ray's segment inside ``grid`` (further clipped to [near, far]) into S equal intervals.

    Args:
        origins, directions: (R, 3).
        grid: the voxel grid whose box bounds the samples.
        num_samples: S.
        near, far: optional global clipping of ``t``.
        stratified: sample uniformly inside each interval (training) instead of at its midpoint.
        generator: random generator for ``stratified``.
    Returns:
        :class:`RaySamples` with (R, S) tensors.
    """
    if num_samples < 1:
        raise ValueError(f"sample_along_rays: num_samples must be >= 1, got {num_samples}")
    t_near, t_far, _ = rays_aabb_intersect(origins, directions, grid.bounds(origins.device, origins.dtype))
    if near is not None:
        t_near = t_near.clamp(min=near)
    if far is not None:
        t_far = t_far.clamp(max=far)
    hit = t_far > t_near
    length = torch.where(hit, t_far - t_near, torch.zeros_like(t_far))  # (R,)
    t_near = torch.where(hit, t_near, torch.zeros_like(t_near))
    steps = torch.linspace(0.0, 1.0, num_samples + 1, device=origins.device, dtype=origins.dtype)
    edges = t_near[:, None] + length[:, None] * steps  # (R, S + 1)
    t_starts, t_ends = edges[:, :-1], edges[:, 1:]
    if stratified:
        u = torch.rand(t_starts.shape, generator=generator, device="cpu" if generator is None else generator.device,
                       dtype=origins.dtype).to(origins.device)
    else:
        u = torch.full_like(t_starts, 0.5)
    t = t_starts + (t_ends - t_starts) * u
    deltas = (t_ends - t_starts) * directions.norm(dim=-1, keepdim=True)
    return RaySamples(t_starts=t_starts, t_ends=t_ends, t=t, deltas=deltas, hit=hit)


@dataclass
class PackedSamples:
    """Samples of many rays packed into one dimension P (sorted by ray, then along the ray).

    Attributes:
        ray_index: (P,) int64 ray of each sample, in [0, R).
        sample_index: (P,) int64 position of the sample in its ray's (R, S) layout.
        t: (P,) sample parameters. deltas: (P,) interval lengths in world units.
        points_world: (P, 3).
        num_rays: R. num_samples: S (the padded layout is (R, S)).
    """

    ray_index: Tensor
    sample_index: Tensor
    t: Tensor
    deltas: Tensor
    points_world: Tensor
    num_rays: int
    num_samples: int

    @property
    def num_packed(self) -> int:
        return self.ray_index.shape[0]

    def pad(self, values: Tensor, fill: float = 0.0) -> Tensor:
        """Packed (P, ...) values -> padded (R, S, ...), ``fill`` where a sample was skipped."""
        out = values.new_full((self.num_rays, self.num_samples, *values.shape[1:]), fill)
        return out.index_put((self.ray_index, self.sample_index), values)


class OccupancyGrid:
    """Dense boolean occupancy of a batch, for empty-space skipping (nerfacc-style bitmap).

    One byte per voxel and scene (147 kB for the default 96 x 96 x 16 grid): cheap next to the
    features, which stay sparse. ``coarse`` is the occupancy dilated by one voxel: a sample whose
    containing voxel is not in ``coarse`` has no occupied trilinear corner.

    Args:
        occupancy: SparseVoxels of the occupied sites (feats unused).
    """

    def __init__(self, occupancy: SparseVoxels):
        self.grid = occupancy.grid
        self.batch_size = occupancy.batch_size
        coords = occupancy.coords.long()
        occupied = torch.zeros(self.batch_size, *self.grid.shape, dtype=torch.bool, device=coords.device)
        occupied[coords[:, 0], coords[:, 1], coords[:, 2], coords[:, 3]] = True
        self.occupied = occupied  # (B, X, Y, Z)
        self.coarse = F.max_pool3d(occupied[:, None].float(), kernel_size=3, stride=1, padding=1)[:, 0].bool()

    @staticmethod
    def _read(volume: Tensor, batch_index: Tensor, index_xyz: Tensor, *, clamp: bool = False) -> Tensor:
        """volume[b, ix, iy, iz] for (..., 3) int64 indices: False outside the grid, or with ``clamp`` the value of
        the nearest voxel inside it."""
        upper = index_xyz.new_tensor(volume.shape[1:])
        clamped = torch.minimum(index_xyz.clamp(min=0), upper - 1)
        value = volume[batch_index, clamped[..., 0], clamped[..., 1], clamped[..., 2]]
        return value if clamp else ((index_xyz >= 0) & (index_xyz < upper)).all(dim=-1) & value

    def touches(self, points_world: Tensor, batch_index: Tensor) -> Tensor:
        """(P,) bool: some trilinear corner of the point (P, 3) is occupied (exact, outside the grid too)."""
        containing = self.grid.world_to_index(points_world)  # (P, 3)
        # cheap superset, one read per point: the dilated bitmap at the containing voxel, clamped into the grid
        # (a point just outside it still has corners on the border voxels)
        keep = self._read(self.coarse, batch_index, containing, clamp=True)
        candidates = torch.nonzero(keep).squeeze(1)
        corner_index, _ = trilinear_corners(self.grid, points_world[candidates])  # (P', 8, 3)
        exact = self._read(self.occupied, batch_index[candidates, None].expand(-1, 8), corner_index).any(dim=1)
        keep[candidates] = exact
        return keep


def occupied_samples(origins: Tensor, directions: Tensor, samples: RaySamples,
                     occupancy: SparseVoxels | OccupancyGrid, ray_batch_index: Tensor | None = None) -> PackedSamples:
    """Keep the samples whose trilinear support (8 surrounding voxel centres) touches an occupied voxel.

    A sample whose 8 corners are all absent from ``occupancy`` reads exactly zero from any field
    supported on ``occupancy`` (see :func:`sample_sparse_trilinear`), so when ``occupancy``
    contains the field's voxels (or a dilation of them) skipping is exact. Rays that miss the grid
    or meet no occupied voxel get no samples.

    Args:
        origins, directions: (R, 3).
        samples: from :func:`sample_along_rays`.
        occupancy: SparseVoxels of the occupied set (only coords are used) or its :class:`OccupancyGrid`.
        ray_batch_index: (R,) scene of each ray (default 0).
    Returns:
        :class:`PackedSamples`.
    """
    occupancy = occupancy if isinstance(occupancy, OccupancyGrid) else OccupancyGrid(occupancy)
    num_rays, num_samples = samples.t.shape
    if ray_batch_index is None:
        ray_batch_index = torch.zeros(num_rays, dtype=torch.long, device=origins.device)
    # Only rays that cross the grid are tested.
    ray_candidates = torch.nonzero(samples.hit).squeeze(1)  # (R',)
    t = samples.t[ray_candidates]  # (R', S)
    points = origins[ray_candidates, None, :] + t[..., None] * directions[ray_candidates, None, :]  # (R', S, 3)
    batch = ray_batch_index[ray_candidates].repeat_interleave(num_samples)  # (R'*S,)
    keep = occupancy.touches(points.reshape(-1, 3), batch).reshape(-1, num_samples)  # (R', S)
    local_ray, sample_index = torch.nonzero(keep, as_tuple=True)  # row-major: sorted by ray, then t
    ray_index = ray_candidates[local_ray]
    return PackedSamples(
        ray_index=ray_index,
        sample_index=sample_index,
        t=samples.t[ray_index, sample_index],
        deltas=samples.deltas[ray_index, sample_index],
        points_world=points[local_ray, sample_index],
        num_rays=num_rays,
        num_samples=num_samples,
    )


# ---------------------------------------------------------------------------------------------- compositing
def density_to_alpha(density: Tensor, deltas: Tensor) -> Tensor:
    """Opacity of an interval: ``alpha = 1 - exp(-sigma * delta)`` (density >= 0, per world unit)."""
    return -torch.expm1(-density * deltas)


def composite_emission_absorption(alphas: Tensor, values: Tensor, *, surface_thickness: int = 1,
                                  eps: float = 1e-10) -> tuple[Tensor, Tensor, Tensor]:
    """Emission-absorption compositing of padded rays (torch).

    ``T_i = prod_{j < i - surface_thickness + 1} (1 + eps - alpha_j)`` (the exclusive product for the
    default ``surface_thickness=1``), ``w_i = alpha_i T_i``, ``out = sum_i w_i v_i``,
    ``opacity = 1 - prod_i (1 + eps - alpha_i)``. Same semantics as PyTorch3D's
    ``EmissionAbsorptionRaymarcher`` (``eps`` keeps the product from reaching exact 0).

    Args:
        alphas: (R, S) opacities in [0, 1]. values: (R, S, C).
    Returns:
        ``(values, opacity, weights)``: (R, C), (R,), (R, S).

    Example:
        >>> a = torch.tensor([[0.5, 0.5]]); v = torch.tensor([[[1.0], [3.0]]])
        >>> out, opacity, w = composite_emission_absorption(a, v, eps=0.0)
        >>> out, opacity, w
        (tensor([[1.2500]]), tensor([0.7500]), tensor([[0.5000, 0.2500]]))
    """
    if alphas.dim() != 2 or values.dim() != 3 or values.shape[:2] != alphas.shape:
        raise ValueError(f"composite_emission_absorption: alphas (R, S) and values (R, S, C) expected, got "
                         f"{tuple(alphas.shape)} and {tuple(values.shape)}")
    if surface_thickness < 1:
        raise ValueError(f"surface_thickness must be >= 1, got {surface_thickness}")
    survive = torch.cumprod((1.0 + eps) - alphas, dim=-1)  # (R, S)
    shift = min(surface_thickness, alphas.shape[1])
    transmittance = torch.cat([torch.ones_like(survive[:, :shift]), survive[:, :alphas.shape[1] - shift]], dim=-1)
    weights = alphas * transmittance
    out = (weights[..., None] * values).sum(dim=1)
    opacity = 1.0 - survive[:, -1] if alphas.shape[1] else alphas.new_zeros(alphas.shape[0])
    return out, opacity, weights


def composite_packed(alphas: Tensor, values: Tensor, ray_index: Tensor, num_rays: int, *,
                     eps: float = 1e-10) -> tuple[Tensor, Tensor, Tensor]:
    """Emission-absorption compositing of a variable number of samples per ray (torch).

    Same result as :func:`composite_emission_absorption` (``surface_thickness=1``) on the padded
    layout with zero alpha at missing samples. The per-ray exclusive product is a per-ray
    cumulative sum of ``log(1 + eps - alpha)`` in float64.

    Args:
        alphas: (P,) in [0, 1]. values: (P, C). ray_index: (P,) int64, sorted (non-decreasing).
        num_rays: R.
    Returns:
        ``(values, opacity, weights)``: (R, C), (R,), (P,).
    """
    if alphas.dim() != 1 or values.dim() != 2 or values.shape[0] != alphas.shape[0] or ray_index.shape != alphas.shape:
        raise ValueError(f"composite_packed: alphas (P,), values (P, C) and ray_index (P,) expected, got "
                         f"{tuple(alphas.shape)}, {tuple(values.shape)}, {tuple(ray_index.shape)}")
    if ray_index.numel() > 1 and bool((ray_index[1:] < ray_index[:-1]).any()):
        raise ValueError("composite_packed: ray_index must be sorted (samples grouped by ray, in ray order)")
    log_survive = torch.log((1.0 + eps) - alphas.double())  # (P,)
    # Position of each sample within its ray, then a per-ray cumulative sum on a (R, S_max) scratch
    # layout: sums never cross rays, so no cancellation between rays leaks into the gradients.
    counts = torch.bincount(ray_index, minlength=num_rays)  # (R,)
    first = torch.cumsum(counts, dim=0) - counts  # (R,) index of each ray's first sample
    position = torch.arange(ray_index.shape[0], device=ray_index.device) - first[ray_index]  # (P,)
    max_count = int(counts.max()) if num_rays else 0
    scratch = log_survive.new_zeros(num_rays, max_count).index_put((ray_index, position), log_survive)
    inclusive = torch.cumsum(scratch, dim=1)  # (R, S_max)
    transmittance = torch.exp((inclusive - scratch)[ray_index, position])  # (P,) exclusive product
    weights = (alphas.double() * transmittance).to(alphas.dtype)
    out = scatter_sum(weights[:, None] * values, ray_index, num_rays)  # (R, C)
    log_total = inclusive[:, -1] if max_count else log_survive.new_zeros(num_rays)
    opacity = (-torch.expm1(log_total)).to(alphas.dtype)
    return out, opacity, weights


def composite_pytorch3d(alphas: Tensor, values: Tensor, *, surface_thickness: int = 1,
                        eps: float = 1e-10) -> tuple[Tensor, Tensor]:
    """Compositing through ``pytorch3d.renderer.EmissionAbsorptionRaymarcher`` (requires pytorch3d).

    PyTorch3D calls the per-sample opacities "densities" (values in [0, 1]) and returns the
    features with the opacity appended; this splits them again.

    Args:
        alphas: (R, S). values: (R, S, C).
    Returns:
        ``(values, opacity)``: (R, C), (R,).
    """
    renderer = require_pytorch3d().renderer
    raymarcher = renderer.EmissionAbsorptionRaymarcher(surface_thickness=surface_thickness)
    features_opacity = raymarcher(rays_densities=alphas[..., None], rays_features=values, eps=eps)  # (R, C + 1)
    return features_opacity[..., :-1], features_opacity[..., -1]


# ---------------------------------------------------------------------------------------------- render
@dataclass
class RenderedRays:
    """Per-ray renders.

    Attributes:
        rgb: (R, 3) colour composited over ``background``.
        opacity: (R,) accumulated opacity (the rendered mask).
        features: (R, F) feature render (F = 0 when the fields carry no features).
        depth: (R,) expected ``t`` (z-depth for ``pixel_rays``), ``sum_i w_i t_i`` (not divided by opacity).
        num_samples: number of samples evaluated (after empty-space skipping).
    """

    rgb: Tensor
    opacity: Tensor
    features: Tensor
    depth: Tensor
    num_samples: int


def _composite(alphas: Tensor, values: Tensor, packed: PackedSamples, backend: str) -> tuple[Tensor, Tensor]:
    """(values (R, C), opacity (R,)) from packed alphas (P,) and values (P, C)."""
    if backend == "pytorch3d":
        return composite_pytorch3d(packed.pad(alphas), packed.pad(values))
    out, opacity, _ = composite_packed(alphas, values, packed.ray_index, packed.num_rays)
    return out, opacity


def render_rays(fields: SparseVoxels, origins: Tensor, directions: Tensor, *, num_samples: int = 128,
                ray_batch_index: Tensor | None = None, density_channel: int = 0, rgb_channels: slice = slice(1, 4),
                feature_channels: slice | None = slice(4, None),
                occupancy: SparseVoxels | OccupancyGrid | None = None,
                near: float | None = None, far: float | None = None, stratified: bool = False,
                generator: torch.Generator | None = None, detach_density_for_features: bool = True,
                render_rgb: bool = True, render_features: bool = True, background: float | Tensor = 0.0,
                backend: str = "auto", table: VoxelHash | None = None) -> RenderedRays:
    """Render rays through sparse voxel fields.

    ``fields.feats`` columns hold, per voxel, the density (>= 0, per world unit), the colour (in
    [0, 1]) and the neural features, located by the channel arguments (default layout
    ``[density, r, g, b, features...]``). Fields are read by trilinear interpolation with absent
    voxels at zero, only at samples that touch an occupied voxel.

    Args:
        fields: SparseVoxels (N, C).
        origins, directions: (R, 3) rays (``t`` in units of ``directions``).
        num_samples: S samples per ray on its segment inside the grid.
        ray_batch_index: (R,) scene of each ray (default 0).
        occupancy: voxels used for empty-space skipping (default: the sites of ``fields``, which is exact).
        detach_density_for_features: composite the features with weights from a detached density
            (gradients of the feature loss reach the features only, as in the paper).
        render_rgb, render_features: skip the colour or feature composite (returns zeros of the right width).
        background: colour added with weight ``1 - opacity``.
        backend: ``"auto" | "torch" | "pytorch3d"`` compositing backend.
        table: prebuilt :class:`VoxelHash` of ``fields`` (reused across chunks).
    Returns:
        :class:`RenderedRays`.
    """
    backend = resolve_backend(backend, "pytorch3d")
    num_rays = origins.shape[0]
    if origins.shape != (num_rays, 3) or directions.shape != (num_rays, 3):
        raise ValueError(f"render_rays: origins and directions must be (R, 3), got {tuple(origins.shape)} and "
                         f"{tuple(directions.shape)}")
    dtype = fields.feats.dtype
    origins, directions = origins.to(dtype), directions.to(dtype)
    if ray_batch_index is None:
        ray_batch_index = torch.zeros(num_rays, dtype=torch.long, device=origins.device)
    table = table or VoxelHash(fields)
    if not isinstance(occupancy, OccupancyGrid):
        occupancy = OccupancyGrid(fields if occupancy is None else occupancy)
    samples = sample_along_rays(origins, directions, fields.grid, num_samples, near=near, far=far,
                                stratified=stratified, generator=generator)
    packed = occupied_samples(origins, directions, samples, occupancy, ray_batch_index)
    point_batch = ray_batch_index[packed.ray_index]
    sampled = sample_sparse_trilinear(fields, packed.points_world, point_batch, table=table)  # (P, C)
    density = sampled[:, density_channel].clamp(min=0.0)
    alphas = density_to_alpha(density, packed.deltas)  # (P,)

    rgb_width = len(range(*rgb_channels.indices(fields.num_channels)))
    feature_width = 0 if feature_channels is None else len(range(*feature_channels.indices(fields.num_channels)))
    # Colour and depth share one composite: values = [rgb, t].
    colour_values = [packed.t[:, None].to(dtype)]
    if render_rgb:
        colour_values.insert(0, sampled[:, rgb_channels])
    out, opacity = _composite(alphas, torch.cat(colour_values, dim=1), packed, backend)
    depth = out[:, -1]
    if render_rgb:
        background = torch.as_tensor(background, dtype=dtype, device=out.device)
        rgb = out[:, :-1] + (1.0 - opacity)[:, None] * background
    else:
        rgb = out.new_zeros(num_rays, rgb_width)
    if render_features and feature_width:
        feature_alphas = alphas.detach() if detach_density_for_features else alphas
        features, _ = _composite(feature_alphas, sampled[:, feature_channels], packed, backend)
    else:
        features = out.new_zeros(num_rays, feature_width)
    return RenderedRays(rgb=rgb, opacity=opacity, features=features, depth=depth, num_samples=packed.num_packed)


def render_views(fields: SparseVoxels, K: Tensor, world_to_cam: Tensor, image_size: tuple[int, int], *,
                 render_size: tuple[int, int] | None = None, view_batch_index: Tensor | None = None,
                 chunk_size: int = 16384, **render_kwargs) -> dict[str, Tensor]:
    """Render whole images of V views, chunking the rays.

    Args:
        fields: SparseVoxels fields (see :func:`render_rays`).
        K: (V, 3, 3) intrinsics of images of ``image_size``. world_to_cam: (V, 4, 4).
        image_size: (H, W) the resolution ``K`` refers to.
        render_size: (h, w) resolution to render at (default ``image_size``); ``K`` is rescaled
            with :func:`~oddsparse.geometry.cameras.scale_intrinsics` (e.g. 32 x 32 for features).
        view_batch_index: (V,) scene of each view (default 0).
        chunk_size: rays per :func:`render_rays` call.
        **render_kwargs: forwarded to :func:`render_rays` (``num_samples``, ``stratified``, ...).
    Returns:
        dict with ``rgb`` (V, 3, h, w), ``opacity`` (V, h, w), ``features`` (V, F, h, w),
        ``depth`` (V, h, w) and ``num_samples`` (int).

    Example:
        >>> out = render_views(fields, K, world_to_cam, (256, 256), render_size=(32, 32))  # doctest: +SKIP
        >>> out["features"].shape  # doctest: +SKIP
        torch.Size([V, 128, 32, 32])
    """
    height, width = image_size
    out_h, out_w = render_size or image_size
    dtype = fields.feats.dtype
    K = scale_intrinsics(K.to(dtype), out_w / width, out_h / height)
    world_to_cam = world_to_cam.to(dtype)
    views = K.shape[0]
    origins, directions = pixel_rays(K, world_to_cam, out_h, out_w)  # (V, h*w, 3)
    origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
    if view_batch_index is None:
        view_batch_index = torch.zeros(views, dtype=torch.long, device=K.device)
    ray_batch_index = view_batch_index.long().repeat_interleave(out_h * out_w)  # (V*h*w,)
    table = VoxelHash(fields)
    occupancy = render_kwargs.pop("occupancy", None)
    if not isinstance(occupancy, OccupancyGrid):  # built once for all chunks
        occupancy = OccupancyGrid(fields if occupancy is None else occupancy)
    render_kwargs["occupancy"] = occupancy
    chunks = []
    for start in range(0, origins.shape[0], chunk_size):
        stop = start + chunk_size
        chunks.append(render_rays(fields, origins[start:stop], directions[start:stop],
                                  ray_batch_index=ray_batch_index[start:stop], table=table, **render_kwargs))

    def image(name: str) -> Tensor:
        flat = torch.cat([getattr(chunk, name) for chunk in chunks])  # (V*h*w, ...)
        if flat.dim() == 1:
            return flat.reshape(views, out_h, out_w)
        return flat.reshape(views, out_h, out_w, -1).permute(0, 3, 1, 2)

    return {"rgb": image("rgb"), "opacity": image("opacity"), "features": image("features"),
            "depth": image("depth"), "num_samples": sum(chunk.num_samples for chunk in chunks)}


# ------------------------------------------------------------------------------------ transmittance
def point_transmittance(density: SparseVoxels, points_world: Tensor, origins: Tensor, *, step: float,
                        skip: float = 0.0, scene: int = 0, chunk: int = 1 << 20) -> Tensor:
    """How much of each point each origin (a camera centre) sees: ``exp(-integral of density)`` along the segment.

    The segment from point ``p`` towards origin ``o`` starts ``skip`` metres out of ``p`` (so that the point's own
    voxel does not hide it) and ends at ``o`` or where it leaves the grid, whichever comes first (outside the grid
    the density is 0). It is cut into intervals of ``step`` metres (the last one shorter) and each interval
    contributes ``density(midpoint) * length`` (midpoint rule, trilinear density as the renderer reads it);
    midpoints that no present voxel touches are skipped (:class:`OccupancyGrid`: they read 0), as the renderer
    skips empty space.

    Args:
        density: one-channel :class:`SparseVoxels` of density per metre (``VoxelFields.density``).
        points_world: (P, 3) points of scene ``scene`` (the batch entry of ``density`` they lie in).
        origins: (V, 3) where each view looks from.
        step: interval length in metres (half a voxel keeps the midpoint rule close to the integral).
        skip: metres of the segment left out next to the point.
        chunk: samples read at once (memory bound).
    Returns:
        (V, P) transmittance in [0, 1]; 1 where the segment after ``skip`` is empty or shorter than 0.

    Example:
        >>> from oddsparse.geometry.grid import VoxelGrid
        >>> grid = VoxelGrid(shape=(4, 1, 1), voxel_size=1.0, origin=(0.0, 0.0, 0.0))
        >>> wall = SparseVoxels.from_dense(torch.full((1, 1, 4, 1, 1), 0.5), grid)
        >>> # density read trilinearly: each end's half voxel fades to 0, so 3.75 m of 0.5/m: exp(-1.875)
        >>> point_transmittance(wall, torch.tensor([[0.0, 0.5, 0.5]]), torch.tensor([[9.0, 0.5, 0.5]]), step=0.5)
        tensor([[0.1534]])
    """
    if density.num_channels != 1:
        raise ValueError(f"point_transmittance: density must have one channel, got {density.num_channels}")
    if points_world.dim() != 2 or points_world.shape[1] != 3 or origins.dim() != 2 or origins.shape[1] != 3:
        raise ValueError(f"point_transmittance: points_world and origins must be (P, 3) and (V, 3), got "
                         f"{tuple(points_world.shape)} and {tuple(origins.shape)}")
    if step <= 0 or skip < 0:
        raise ValueError(f"point_transmittance: step must be > 0 and skip >= 0, got step={step}, skip={skip}")
    dtype = density.feats.dtype
    points = points_world.to(dtype)
    views, count = origins.shape[0], points.shape[0]
    offset = origins.to(dtype)[:, None, :] - points[None]  # (V, P, 3)
    length = offset.norm(dim=-1).clamp(min=1e-12)
    direction = (offset / length[..., None]).reshape(-1, 3)
    starts = points[None].expand(views, -1, -1).reshape(-1, 3)
    _, t_far, hit = rays_aabb_intersect(starts, direction, density.grid.bounds(points.device, dtype))
    t_end = torch.minimum(length.reshape(-1), torch.where(hit, t_far, torch.zeros_like(t_far)))  # (R,)
    span = (t_end - skip).clamp(min=0.0)
    num_steps = int(torch.ceil(span.max() / step).item()) if span.numel() else 0
    depth = torch.zeros_like(span)
    if num_steps == 0:
        return torch.ones(views, count, dtype=dtype, device=points.device)
    table = VoxelHash(density)
    occupancy = OccupancyGrid(density)  # empty-space skipping: a sample no present voxel touches reads 0
    rays_per_chunk = max(1, chunk // num_steps)
    k = torch.arange(num_steps, dtype=dtype, device=points.device)
    for begin in range(0, span.shape[0], rays_per_chunk):
        rows = slice(begin, begin + rays_per_chunk)
        lo = skip + k[None] * step  # (1, K)
        hi = torch.minimum(lo + step, t_end[rows, None])  # (r, K)
        interval = (hi - lo).clamp(min=0.0)
        middle = lo + 0.5 * interval
        samples = starts[rows, None] + middle[..., None] * direction[rows, None]  # (r, K, 3)
        flat = samples.reshape(-1, 3)
        batch = torch.full((flat.shape[0],), scene, dtype=torch.long, device=points.device)
        touched = torch.nonzero(occupancy.touches(flat, batch)).squeeze(1)
        sigma = flat.new_zeros(flat.shape[0])
        sigma[touched] = sample_sparse_trilinear(density, flat[touched], batch[touched], table=table)[:, 0]
        depth[rows] = (sigma.reshape(-1, num_steps) * interval).sum(dim=1)
    return torch.exp(-depth).reshape(views, count)


def roi_view_samples(maps: Tensor, K: Tensor, world_to_cam: Tensor, image_size: tuple[int, int],
                     density: SparseVoxels, boxes, *, out_size: int = 8, margin: float = 0.0, step: float | None = None,
                     skip: float | None = None, scene: int = 0) -> tuple[Tensor, Tensor]:
    """What the views show at the RoI cells of boxes, each view weighted by how much of the cell it sees.

    The cell centres of :func:`~oddsparse.geometry.roi.roi_points` read the per-view ``maps`` (images, or
    feature maps covering the image) with :func:`~oddsparse.geometry.unproject.sample_views`, weighted by
    :func:`point_transmittance` through ``density`` towards each camera: a cell takes the colour of the views
    that see it, not of those whose line of sight some opaque voxel blocks (the plain mean over views of
    back-projection mixes the two).

    Args:
        maps: (V, C, h, w). K: (V, 3, 3) for images of ``image_size`` (H, W). world_to_cam: (V, 4, 4).
        density: one-channel density per metre of scene ``scene`` (e.g. ``VoxelFields.density`` or a carved hull
            times a constant).
        boxes: O yaw boxes (:class:`~oddsparse.geometry.boxes.YawBoxes` or ``(center, size, yaw)``) of that scene.
        step, skip: of :func:`point_transmittance`; default half a voxel and one voxel of ``density``'s grid.
    Returns:
        ``(values, support)``: (O, C, S, S, S) weighted mean samples (0 where no view sees the cell) and
        (O, 1, S, S, S) summed weights (transmittances) of the views that see each cell.
    """
    boxes = as_yaw_boxes(boxes)
    voxel = density.grid.voxel_size
    points = roi_points(boxes.center, boxes.size, boxes.yaw, out_size, margin).to(maps.dtype)  # (O, S, S, S, 3)
    flat = points.reshape(-1, 3)
    transmittance = point_transmittance(density, flat, camera_centers(world_to_cam.to(flat.dtype)),
                                        step=0.5 * voxel if step is None else step,
                                        skip=voxel if skip is None else skip, scene=scene)
    values, support = sample_views(maps, K, world_to_cam, image_size, flat, transmittance.to(maps.dtype))
    shape = (points.shape[0], out_size, out_size, out_size)
    return (values.reshape(*shape, -1).permute(0, 4, 1, 2, 3),
            support.reshape(*shape)[:, None])
