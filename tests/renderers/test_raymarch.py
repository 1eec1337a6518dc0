"""Ray sampling, empty-space skipping and emission-absorption compositing."""
import math

import pytest
import torch

from oddsparse import SparseVoxels, VoxelGrid
from oddsparse._backends import has_pytorch3d
from oddsparse.geometry.cameras import look_at
from oddsparse.renderers import (
    composite_emission_absorption,
    composite_packed,
    composite_pytorch3d,
    density_to_alpha,
    occupied_samples,
    point_transmittance,
    rays_aabb_intersect,
    roi_view_samples,
    render_rays,
    render_views,
    sample_along_rays,
)
from reference_renderers import composite_reference, render_dense_reference


# ---------------------------------------------------------------------------------------------- rays
def test_rays_aabb_intersect_hand_values():
    bounds = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 1.0]])
    origins = torch.tensor([[-1.0, 0.5, 0.5],   # along +x with |d| = 2: enters at x=0 (t=.5), leaves x=1 (t=1)
                            [0.5, 1.0, 0.5],    # starts inside, along +y: leaves y=2 at t=1
                            [-1.0, 3.0, 0.5],   # passes above the box in y: miss
                            [2.0, 0.5, 0.5],    # box behind the ray: miss
                            [-1.0, -1.0, 0.5]])  # diagonal in xy: enters at t=1 (x=y=0), leaves x=1 at t=2
    directions = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    t_near, t_far, hit = rays_aabb_intersect(origins, directions, bounds)
    assert hit.tolist() == [True, True, False, False, True]
    torch.testing.assert_close(t_near[hit], torch.tensor([0.5, 0.0, 1.0]))
    torch.testing.assert_close(t_far[hit], torch.tensor([1.0, 1.0, 2.0]))


def test_sample_along_rays_stays_inside_and_covers_segment():
    grid = VoxelGrid(shape=(4, 4, 2), voxel_size=0.5, origin=(-1.0, -1.0, 0.0))
    generator = torch.Generator().manual_seed(0)
    origins = torch.randn(64, 3, generator=generator) * 3
    directions = torch.randn(64, 3, generator=generator)
    bounds = grid.bounds()
    for stratified in (False, True):
        samples = sample_along_rays(origins, directions, grid, 16, stratified=stratified, generator=generator)
        points = origins[:, None] + samples.t[..., None] * directions[:, None]
        inside = ((points >= bounds[0] - 1e-5) & (points <= bounds[1] + 1e-5)).all(-1)
        assert samples.hit.any() and (~samples.hit).any()
        assert inside[samples.hit].all()
        assert ((samples.t >= samples.t_starts) & (samples.t <= samples.t_ends)).all()
        t_near, t_far, _ = rays_aabb_intersect(origins, directions, bounds)
        lengths = samples.deltas.sum(-1)
        expected = (t_far - t_near) * directions.norm(dim=-1)
        torch.testing.assert_close(lengths[samples.hit], expected[samples.hit])
        assert (samples.deltas[~samples.hit] == 0).all()


# ---------------------------------------------------------------------------------------------- compositing
def test_composite_hand_computed_transmittances():
    # alphas 0.5, 0.2, 1.0, 0.3: T = 1, 0.5, 0.4, 0 ; w = 0.5, 0.1, 0.4, 0 ; sum w v = 0.5 + 0.2 + 1.2 = 1.9
    alphas = torch.tensor([[0.5, 0.2, 1.0, 0.3], [0.1, 0.0, 0.5, 0.0]])
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]])[..., None]
    out, opacity, weights = composite_emission_absorption(alphas, values, eps=0.0)
    # second ray: T = 1, 0.9, 0.9, 0.45 ; w = 0.1, 0, 0.45, 0 ; out = 1 + 13.5 = 14.5 ; opacity = 1 - 0.45
    torch.testing.assert_close(weights, torch.tensor([[0.5, 0.1, 0.4, 0.0], [0.1, 0.0, 0.45, 0.0]]))
    torch.testing.assert_close(out, torch.tensor([[1.9], [14.5]]))
    torch.testing.assert_close(opacity, torch.tensor([1.0, 0.55]))
    # the default eps (PyTorch3D's 1e-10) changes nothing visible
    out_eps, opacity_eps, _ = composite_emission_absorption(alphas.double(), values.double())
    out_exact, opacity_exact, _ = composite_emission_absorption(alphas.double(), values.double(), eps=0.0)
    torch.testing.assert_close(out_eps, out_exact, rtol=0, atol=1e-8)
    torch.testing.assert_close(opacity_eps, opacity_exact, rtol=0, atol=1e-8)
    # surface_thickness=2 delays absorption by one more sample: T = 1, 1, 0.5, 0.4
    _, _, thick = composite_emission_absorption(alphas[:1], values[:1], surface_thickness=2, eps=0.0)
    torch.testing.assert_close(thick, torch.tensor([[0.5, 0.2, 0.5, 0.12]]))
    torch.testing.assert_close(density_to_alpha(torch.tensor([0.0, math.log(2.0)]), torch.tensor([1.0, 1.0])),
                               torch.tensor([0.0, 0.5]))


def _random_padded(generator, rays=40, samples=12, channels=3):
    alphas = torch.rand(rays, samples, generator=generator, dtype=torch.float64)
    alphas = alphas * (torch.rand(rays, samples, generator=generator) < 0.4)  # many empty samples
    alphas[0] = 0.0  # a ray with nothing on it
    alphas[1, 3] = 1.0  # an opaque sample
    values = torch.randn(rays, samples, channels, generator=generator, dtype=torch.float64)
    return alphas, values


def test_padded_matches_naive_loop():
    generator = torch.Generator().manual_seed(1)
    alphas, values = _random_padded(generator)
    out, opacity, weights = composite_emission_absorption(alphas, values, eps=1e-10)
    ref_out, ref_opacity, ref_weights = composite_reference(alphas, values, eps=1e-10)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(opacity, ref_opacity)
    torch.testing.assert_close(weights, ref_weights)


def test_packed_matches_padded_forward_and_backward():
    generator = torch.Generator().manual_seed(2)
    alphas, values = _random_padded(generator)
    alphas.requires_grad_(True)
    values.requires_grad_(True)
    upstream = torch.randn(40, 3, generator=generator, dtype=torch.float64)
    out, opacity, weights = composite_emission_absorption(alphas, values)
    ((out * upstream).sum() + opacity.sum()).backward()
    grads_padded = alphas.grad.clone(), values.grad.clone()
    alphas.grad, values.grad = None, None

    keep = alphas.detach() > 0  # pack the non-empty samples only
    ray_index, sample_index = torch.nonzero(keep, as_tuple=True)
    out_p, opacity_p, weights_p = composite_packed(alphas[keep], values[keep], ray_index, 40)
    ((out_p * upstream).sum() + opacity_p.sum()).backward()
    torch.testing.assert_close(out_p, out)
    torch.testing.assert_close(opacity_p, opacity)
    torch.testing.assert_close(weights_p, weights[keep])
    torch.testing.assert_close(alphas.grad[keep], grads_padded[0][keep])
    torch.testing.assert_close(values.grad, grads_padded[1])
    assert out_p[0].abs().max() == 0 and opacity_p[0] == 0


@pytest.mark.skipif(not has_pytorch3d(), reason="pytorch3d is not installed (optional backend)")
def test_parity_with_pytorch3d_raymarcher():
    generator = torch.Generator().manual_seed(3)
    alphas, values = _random_padded(generator)
    alphas, values = alphas.float(), values.float()
    for thickness in (1, 2):
        out, opacity, _ = composite_emission_absorption(alphas, values, surface_thickness=thickness)
        out_p3d, opacity_p3d = composite_pytorch3d(alphas, values, surface_thickness=thickness)
        torch.testing.assert_close(out_p3d, out, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(opacity_p3d, opacity, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(has_pytorch3d(), reason="checks the error raised when pytorch3d is absent")
def test_pytorch3d_backend_missing_raises_clearly():
    with pytest.raises(ModuleNotFoundError, match="pytorch3d"):
        composite_pytorch3d(torch.zeros(1, 2), torch.zeros(1, 2, 1))


# ---------------------------------------------------------------------------------------------- rendering
def _random_fields(generator, shape=(6, 5, 4), batch=2, feature_dim=2, fraction=0.25):
    grid = VoxelGrid(shape=shape, voxel_size=0.2, origin=(-0.6, -0.5, 0.0))
    mask = torch.rand(batch, *shape, generator=generator) < fraction
    density = torch.rand(batch, 1, *shape, generator=generator, dtype=torch.float64) * 8
    rest = torch.rand(batch, 3 + feature_dim, *shape, generator=generator, dtype=torch.float64)
    dense = torch.cat([density, rest], 1) * mask[:, None]
    return SparseVoxels.from_dense(dense, grid, mask=mask), dense, grid


def _random_rays(generator, count):
    origins = torch.randn(count, 3, generator=generator, dtype=torch.float64) * 0.3 + torch.tensor([0, 0, 2.0],
                                                                                                   dtype=torch.float64)
    targets = torch.rand(count, 3, generator=generator, dtype=torch.float64) * torch.tensor([1.4, 1.2, 0.8],
                                                                                            dtype=torch.float64)
    targets = targets + torch.tensor([-0.7, -0.6, 0.0], dtype=torch.float64)
    directions = targets - origins
    directions[:5] = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)  # start above the box and never enter it
    return origins, directions


def test_render_rays_matches_dense_reference_without_skipping():
    generator = torch.Generator().manual_seed(4)
    fields, dense, grid = _random_fields(generator)
    origins, directions = _random_rays(generator, 60)
    batch = torch.randint(0, 2, (60,), generator=generator)
    out = render_rays(fields, origins, directions, num_samples=24, ray_batch_index=batch, background=0.25,
                      backend="torch")
    rgb, opacity, features, depth = render_dense_reference(dense, grid, origins, directions, batch, 24, background=0.25)
    torch.testing.assert_close(out.rgb, rgb)
    torch.testing.assert_close(out.opacity, opacity)
    torch.testing.assert_close(out.features, features)
    torch.testing.assert_close(out.depth, depth)
    assert (out.opacity[:5] == 0).all() and torch.allclose(out.rgb[:5], torch.full((5, 3), 0.25, dtype=torch.float64))
    assert 0 < out.num_samples < 60 * 24  # empty space was skipped


def test_skipping_is_exact_and_counts_fewer_samples():
    generator = torch.Generator().manual_seed(5)
    fields, _, grid = _random_fields(generator, fraction=0.1)
    origins, directions = _random_rays(generator, 80)
    full = SparseVoxels.from_dense(torch.ones(2, 1, *grid.shape), grid)  # occupancy = every voxel: no skipping
    dense_out = render_rays(fields, origins, directions, num_samples=32, occupancy=full, backend="torch")
    skip_out = render_rays(fields, origins, directions, num_samples=32, backend="torch")
    for name in ("rgb", "opacity", "features", "depth"):
        torch.testing.assert_close(getattr(skip_out, name), getattr(dense_out, name))
    assert skip_out.num_samples < dense_out.num_samples
    samples = sample_along_rays(origins, directions, grid, 32)
    packed = occupied_samples(origins, directions, samples, fields)
    assert packed.num_packed == skip_out.num_samples
    assert (packed.ray_index[1:] >= packed.ray_index[:-1]).all()
    # the padded layout handed to PyTorch3D composites to the same result as the packed one
    alphas = torch.rand(packed.num_packed, generator=generator, dtype=torch.float64)
    values = torch.randn(packed.num_packed, 2, generator=generator, dtype=torch.float64)
    out_packed, opacity_packed, _ = composite_packed(alphas, values, packed.ray_index, packed.num_rays)
    out_padded, opacity_padded, _ = composite_emission_absorption(packed.pad(alphas), packed.pad(values))
    torch.testing.assert_close(out_padded, out_packed)
    torch.testing.assert_close(opacity_padded, opacity_packed)


def test_feature_render_detaches_density():
    generator = torch.Generator().manual_seed(6)
    fields, _, _ = _random_fields(generator)
    origins, directions = _random_rays(generator, 30)
    for detach in (True, False):
        feats = fields.feats.clone().requires_grad_(True)
        out = render_rays(fields.replace(feats=feats), origins, directions, num_samples=16,
                          detach_density_for_features=detach, backend="torch")
        out.features.sum().backward()
        density_grad = feats.grad[:, 0].abs().sum()
        assert (density_grad == 0) == detach
        assert feats.grad[:, 4:].abs().sum() > 0 and feats.grad[:, 1:4].abs().sum() == 0


def _block_scene(normalize=False):
    """A 0.4 m cube of density 1000 / m, colour (0.2, 0.4, 0.6), seen along -x from x = 2."""
    grid = VoxelGrid(shape=(8, 8, 4), voxel_size=0.1, origin=(-0.4, -0.4, 0.0))
    dense = torch.zeros(1, 5, *grid.shape, dtype=torch.float64)
    dense[0, :, 2:6, 2:6, :] = torch.tensor([1000.0, 0.2, 0.4, 0.6, 1.0], dtype=torch.float64)[:, None, None, None]
    fields = SparseVoxels.from_dense(dense, grid)
    eye = torch.tensor([2.0, 0.0, 0.2], dtype=torch.float64)
    world_to_cam = look_at(eye, torch.tensor([0.0, 0.0, 0.2], dtype=torch.float64))[None]
    K = torch.tensor([[[9.0, 0.0, 4.5], [0.0, 9.0, 4.5], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    return fields, K, world_to_cam


def test_occupancy_touches_exactly_where_trilinear_reads_are_nonzero_inside_and_just_outside_the_grid():
    """OccupancyGrid.touches says where a trilinear read of the occupied voxels can be non-zero: points inside
    the grid and within half a voxel outside it (whose corners lie on border voxels), against the read itself."""
    from oddsparse.geometry.sampling import sample_sparse_trilinear
    from oddsparse.renderers.raymarch import OccupancyGrid

    generator = torch.Generator().manual_seed(9)
    grid = VoxelGrid(shape=(5, 4, 3), voxel_size=1.0, origin=(0.0, 0.0, 0.0))
    dense = (torch.rand(2, 1, 5, 4, 3, generator=generator) < 0.25).double()
    dense[:, :, 0] = 1.0  # the x = 0 border occupied, so points just outside it touch it
    occupied = SparseVoxels.from_dense(dense, grid)
    points = torch.rand(4000, 3, generator=generator, dtype=torch.float64) * torch.tensor([7.0, 6.0, 5.0]) - 1.0
    batch = torch.randint(0, 2, (4000,), generator=generator)
    ones = SparseVoxels(occupied.coords, torch.ones(occupied.num_voxels, 1, dtype=torch.float64), 2, grid)
    reads = sample_sparse_trilinear(ones, points, batch)[:, 0]
    touches = OccupancyGrid(occupied).touches(points, batch)
    assert torch.equal(touches, reads > 0)
    assert ((points[:, 0] < 0) & (reads[:] > 0)).sum() > 50  # the case that matters: outside, on the border


def test_render_views_solid_block_hand_values():
    fields, K, world_to_cam = _block_scene()
    out = render_views(fields, K, world_to_cam, (9, 9), num_samples=256, backend="torch", chunk_size=20)
    assert out["rgb"].shape == (1, 3, 9, 9) and out["features"].shape == (1, 1, 9, 9)
    assert out["opacity"].shape == (1, 9, 9) and out["depth"].shape == (1, 9, 9)
    # Centre ray along -x: density ramps linearly from 0 at x = 0.25 to 1000 at x = 0.15, so at
    # distance d past x = 0.25 the optical depth is 5000 d^2: E[d] = sqrt(pi / 20000) and the
    # (zero-filled) colour ramp d / 0.1 averages E[d] / 0.1.
    mean_d = math.sqrt(math.pi / 20000)
    centre = (0, slice(None), 4, 4)
    assert out["opacity"][0, 4, 4] == pytest.approx(1.0, abs=1e-6)
    assert out["depth"][0, 4, 4] == pytest.approx(1.75 + mean_d, abs=2e-3)
    torch.testing.assert_close(out["rgb"][centre], torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64) * mean_d / 0.1,
                               rtol=2e-2, atol=0)
    # corner pixels look past the block (the image spans 0.45 m either side of the axis at 2 m... )
    assert out["opacity"][0, 0, 0] == 0
    # chunking and resolution: rendering at 3 x 3 reuses the 9 x 9 K scaled; its centre is the same ray
    small = render_views(fields, K, world_to_cam, (9, 9), render_size=(3, 3), num_samples=256, backend="torch")
    torch.testing.assert_close(small["rgb"][0, :, 1, 1], out["rgb"][centre])
    whole = render_views(fields, K, world_to_cam, (9, 9), num_samples=256, backend="torch")
    torch.testing.assert_close(whole["rgb"], out["rgb"])


# ------------------------------------------------------------------------------------ transmittance
def _transmittance_loop(dense: torch.Tensor, grid: VoxelGrid, point, origin, step: float, skip: float) -> float:
    """One segment at a time: end it where it leaves the grid (the point lies inside: the nearest bound ahead on
    each axis), read the dense volume with grid_sample (align_corners=False, zero padding) at each interval's
    midpoint."""
    import torch.nn.functional as F

    point, origin = point.double(), origin.double()
    length = float((origin - point).norm())
    direction = (origin - point) / length
    lo, hi = grid.bounds(dtype=torch.float64)
    end_of_segment = length
    for axis in range(3):
        if direction[axis] > 0:
            end_of_segment = min(end_of_segment, float((hi[axis] - point[axis]) / direction[axis]))
        elif direction[axis] < 0:
            end_of_segment = min(end_of_segment, float((lo[axis] - point[axis]) / direction[axis]))
    depth, t = 0.0, skip
    while t < end_of_segment:
        end = min(t + step, end_of_segment)
        middle = point + 0.5 * (t + end) * direction
        unit = (middle - lo) / (hi - lo) * 2.0 - 1.0  # grid_sample coordinates, (x, y, z) -> (W, H, D) order
        sample = F.grid_sample(dense[None, None].double(), unit.flip(0)[None, None, None, None],
                               mode="bilinear", padding_mode="zeros", align_corners=False)
        depth += float(sample) * (end - t)
        t = end
    return math.exp(-depth)


def test_point_transmittance_matches_a_per_segment_loop():
    generator = torch.Generator().manual_seed(3)
    grid = VoxelGrid(shape=(6, 5, 4), voxel_size=0.1, origin=(-0.3, -0.25, 0.0))
    dense = torch.rand(6, 5, 4, generator=generator) * 8.0
    dense[dense < 3.0] = 0.0  # absent voxels read as zero density
    voxels = SparseVoxels.from_dense(dense[None, None], grid)
    points = torch.rand(7, 3, generator=generator) * torch.tensor([0.5, 0.4, 0.35]) + torch.tensor([-0.25, -0.2, 0.02])
    origins = torch.tensor([[1.0, 0.2, 0.8], [-0.6, -0.9, 0.5], [0.05, 0.0, 0.3]])  # the last one inside the grid
    for step, skip in ((0.05, 0.0), (0.013, 0.07)):
        got = point_transmittance(voxels, points, origins, step=step, skip=skip)
        assert got.shape == (3, 7)
        expected = torch.tensor([[_transmittance_loop(dense, grid, p, o, step, skip) for p in points]
                                 for o in origins], dtype=got.dtype)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        assert (got < 0.99).any() and (got > 0.01).any()
    chunked = point_transmittance(voxels, points, origins, step=0.013, skip=0.07, chunk=40)
    torch.testing.assert_close(chunked, got)


def test_point_transmittance_of_a_uniform_slab_is_exp_of_its_thickness():
    """Density 2 per metre filling the grid: a point at mid-height seen from straight above through the upper
    0.2 m keeps exp(-2 * (0.2 - 0.00625 - skip)), seen from beside through 0.15 m exp(-2 * (0.15 - 0.00625 -
    skip)) (the trilinear read fades linearly to half over the outer half voxel, 0.025 m: a quarter of it
    lost, 0.00625 m); zero density hides nothing."""
    grid = VoxelGrid(shape=(6, 6, 8), voxel_size=0.05, origin=(-0.15, -0.15, 0.0))
    slab = SparseVoxels.from_dense(torch.full((1, 1, 6, 6, 8), 2.0), grid)
    point = torch.tensor([[0.0, 0.0, 0.2]])
    origins = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.9, 0.2]])
    for skip in (0.0, 0.1):
        got = point_transmittance(slab, point, origins, step=0.005, skip=skip)  # steps meet the fade's start
        expected = torch.tensor([[math.exp(-2.0 * (0.2 - 0.00625 - skip))],
                                 [math.exp(-2.0 * (0.15 - 0.00625 - skip))]])
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    empty = slab.replace(feats=torch.zeros_like(slab.feats))
    assert (point_transmittance(empty, point, origins, step=0.01) == 1).all()
    with pytest.raises(ValueError, match="one channel"):
        point_transmittance(slab.replace(feats=slab.feats.expand(-1, 2)), point, origins, step=0.01)
    with pytest.raises(ValueError, match="step must be > 0"):
        point_transmittance(slab, point, origins, step=0.0)


def test_roi_view_samples_take_the_colour_of_the_views_that_see_each_cell():
    """Two cameras facing each other across a wall of opaque voxels: a box behind the wall (seen from -x)
    reads the -x view's colour, a box in front of it the +x view's; with no density, the plain mean."""
    from oddsparse.geometry.cameras import default_intrinsics

    grid = VoxelGrid(shape=(6, 6, 4), voxel_size=0.1, origin=(-0.3, -0.3, 0.0))
    dense = torch.zeros(1, 1, 6, 6, 4)
    dense[0, 0, 4] = 1000.0  # the wall: voxels whose centres lie at x = 0.15
    wall = SparseVoxels.from_dense(dense, grid)
    eyes = torch.tensor([[3.0, 0.0, 0.2], [-3.0, 0.0, 0.2]])
    world_to_cam = look_at(eyes, torch.tensor([[0.0, 0.0, 0.2]]).expand(2, 3))
    K = default_intrinsics(32).expand(2, 3, 3)
    maps = torch.stack([torch.full((1, 4, 4), 1.0), torch.full((1, 4, 4), 3.0)])  # +x view 1, -x view 3
    boxes = (torch.tensor([[-0.15, 0.0, 0.2], [0.26, 0.0, 0.2]]), torch.full((2, 3), 0.06), torch.zeros(2))
    values, support = roi_view_samples(maps, K, world_to_cam, (32, 32), wall, boxes, out_size=2)
    assert values.shape == (2, 1, 2, 2, 2) and support.shape == (2, 1, 2, 2, 2)
    torch.testing.assert_close(values[0], torch.full((1, 2, 2, 2), 3.0))  # behind the wall: the -x view only
    torch.testing.assert_close(values[1], torch.full((1, 2, 2, 2), 1.0))  # in front of it: the +x view only
    torch.testing.assert_close(support, torch.ones(2, 1, 2, 2, 2))
    empty = wall.replace(feats=torch.zeros_like(wall.feats))
    values, support = roi_view_samples(maps, K, world_to_cam, (32, 32), empty, boxes, out_size=2)
    torch.testing.assert_close(values, torch.full((2, 1, 2, 2, 2), 2.0))
    torch.testing.assert_close(support, torch.full((2, 1, 2, 2, 2), 2.0))


def test_roi_view_samples_cell_by_cell_against_naive_loops():
    """Each cell (i, j, k) of a turned box with a margin, at its hand-written centre, reads the views' maps (varying
    across the image) by the naive view sampler, weighted by the per-segment transmittance loop with the defaults
    (step half a voxel, skip one voxel): the cells' order, the margin and the default skip, which lets the cells
    inside the wall's surface voxels be seen."""
    import numpy as np

    from oddsparse.geometry.cameras import default_intrinsics
    from reference_geometry import sample_views_reference

    grid = VoxelGrid(shape=(6, 6, 4), voxel_size=0.1, origin=(-0.3, -0.3, 0.0))
    dense = torch.zeros(6, 6, 4)
    dense[4] = 1000.0  # a wall of opaque voxels, x in [0.1, 0.2]
    wall = SparseVoxels.from_dense(dense[None, None], grid)
    eyes = torch.tensor([[3.0, 0.4, 1.0], [-3.0, -0.5, 0.6]])
    world_to_cam = look_at(eyes, torch.tensor([[0.0, 0.0, 0.2]]).expand(2, 3))
    K = default_intrinsics(32).expand(2, 3, 3)
    ramp = torch.linspace(0.0, 1.0, 8)
    maps = torch.stack([torch.stack([(v + 1.0) * ramp[None, :].expand(8, 8), (v + 2.0) * ramp[:, None].expand(8, 8)])
                        for v in range(2)])  # (V, 2, 8, 8): channel 0 varies along u, channel 1 along v
    center, size, yaw, margin, cells = (0.13, 0.02, 0.2), (0.3, 0.2, 0.16), 0.4, 0.03, 3
    values, support = roi_view_samples(maps, K, world_to_cam, (32, 32), wall, (torch.tensor([center]),
                                       torch.tensor([size]), torch.tensor([yaw])), out_size=cells, margin=margin)
    c, s = math.cos(yaw), math.sin(yaw)
    points = []
    for i in range(cells):
        for j in range(cells):
            for k in range(cells):
                local = [((n + 0.5) / cells - 0.5) * (size[a] + 2 * margin) for a, n in enumerate((i, j, k))]
                points.append([center[0] + c * local[0] - s * local[1], center[1] + s * local[0] + c * local[1],
                               center[2] + local[2]])
    points = torch.tensor(points, dtype=torch.float64)
    weights = np.array([[_transmittance_loop(dense, grid, p, eye, 0.05, 0.1) for p in points] for eye in eyes])
    means, seen = sample_views_reference(maps.double().numpy(), K.double().numpy(), world_to_cam.double().numpy(),
                                         (32, 32), points.tolist(), weights)
    assert (weights > 0.5).any(axis=0).all() and (weights < 0.01).any()  # each cell seen; some views blocked
    inside = ((points[:, 0] > 0.1) & (points[:, 0] < 0.2)).numpy()
    assert inside.any() and (weights[:, inside].max(axis=0) > 0.5).all()  # inside the wall, within a voxel of a face
    torch.testing.assert_close(values[0].reshape(2, -1).T.double(), torch.from_numpy(means), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(support[0, 0].reshape(-1).double(), torch.from_numpy(seen), rtol=1e-4, atol=1e-5)
