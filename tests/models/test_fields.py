"""FieldHeads / VoxelFields: per-voxel independence, value ranges, initial density, gradients."""
from __future__ import annotations

import math

import pytest
import torch

from oddsparse import SparseVoxels, VoxelGrid
from oddsparse.models.fields import FieldHeads, VoxelFields


def make_voxels(n=40, channels=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    coords = torch.cat([torch.randint(0, 2, (n, 1), generator=gen),
                        torch.randperm(96 * 96 * 16, generator=gen)[:n, None] % 16,
                        torch.arange(n)[:, None] % 96, torch.arange(n)[:, None] // 96], dim=1).to(torch.int32)
    feats = torch.randn(n, channels, generator=gen)
    return SparseVoxels(coords=coords, feats=feats, batch_size=2, grid=VoxelGrid())


def test_shapes_and_ranges():
    torch.manual_seed(0)
    heads = FieldHeads(16, feature_dim=24, hidden=8, projector_hidden=12)
    voxels = make_voxels()
    fields = heads(voxels)
    assert isinstance(fields, VoxelFields)
    assert fields.density.shape == (40,) and fields.rgb.shape == (40, 3) and fields.features.shape == (40, 24)
    assert fields.feature_dim == 24
    assert torch.equal(fields.voxels.coords, voxels.coords)
    assert (fields.density >= 0).all()
    assert ((fields.rgb > 0) & (fields.rgb < 1)).all()
    # Layer counts stated by the paper: 2 (density), 2 (colour), 4 (projector).
    count = lambda seq: sum(isinstance(m, torch.nn.Linear) for m in seq)  # noqa: E731
    assert (count(heads.density), count(heads.color), count(heads.projector)) == (2, 2, 4)


def test_per_voxel_independence():
    """Permuting voxels permutes outputs; changing one voxel's features changes only its outputs."""
    torch.manual_seed(1)
    heads = FieldHeads(16, feature_dim=8)
    voxels = make_voxels(seed=2)
    out = heads(voxels).voxels.feats
    order = torch.randperm(voxels.num_voxels)
    permuted = heads(voxels.replace(coords=voxels.coords[order], feats=voxels.feats[order])).voxels.feats
    torch.testing.assert_close(permuted, out[order], rtol=0, atol=1e-6)
    changed_feats = voxels.feats.clone()
    changed_feats[5] += 1.0
    changed = heads(voxels.replace(feats=changed_feats)).voxels.feats
    differs = (changed - out).abs().amax(dim=1) > 0
    assert differs[5] and differs.sum() == 1


def test_initial_density_is_modest_and_set_by_argument():
    heads = FieldHeads(16, feature_dim=8, initial_density=3.0)
    with torch.no_grad():
        heads.density[-1].weight.zero_()  # then the output is softplus(bias) for every input
    fields = heads(make_voxels())
    torch.testing.assert_close(fields.density, torch.full((40,), 3.0))
    default = FieldHeads(16).density[-1].bias.item()
    assert math.log1p(math.exp(default)) == pytest.approx(2.0)  # 4 cm voxel opacity 1 - exp(-0.08) ~ 8%


def test_density_scale_multiplies_the_softplus_and_keeps_the_initial_density():
    torch.manual_seed(3)
    plain = FieldHeads(16, feature_dim=8)
    scaled = FieldHeads(16, feature_dim=8, density_scale=50.0, initial_density=3.0)
    scaled.load_state_dict({k: v for k, v in plain.state_dict().items()})
    voxels = make_voxels()
    with torch.no_grad():
        expected = 50.0 * torch.log1p(torch.exp(plain.density(voxels.feats)))[:, 0]  # softplus by hand
        torch.testing.assert_close(scaled(voxels).density, expected)
        fresh = FieldHeads(16, feature_dim=8, density_scale=50.0, initial_density=3.0)
        fresh.density[-1].weight.zero_()
        torch.testing.assert_close(fresh(voxels).density, torch.full((40,), 3.0))  # still 3 / m at start
    with pytest.raises(ValueError, match="density_scale"):
        FieldHeads(16, density_scale=0.0)


def test_gradients_reach_every_parameter_and_the_input():
    torch.manual_seed(2)
    heads = FieldHeads(16, feature_dim=8)
    voxels = make_voxels()
    feats = voxels.feats.clone().requires_grad_(True)
    fields = heads(voxels.replace(feats=feats))
    (fields.density.sum() + fields.rgb.sum() + fields.features.square().sum()).backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    for name, parameter in heads.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_pack_and_validation():
    voxels = make_voxels(n=3)
    fields = VoxelFields.pack(voxels, torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3, 3), torch.ones(3, 5))
    assert fields.voxels.feats.shape == (3, 9)
    torch.testing.assert_close(fields.density, torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(fields.features, torch.ones(3, 5))
    with pytest.raises(ValueError, match=r"\(N, 1 \+ 3 \+ F\)"):
        VoxelFields(voxels.replace(feats=torch.zeros(3, 2)))
    with pytest.raises(ValueError, match="in_channels=16"):
        FieldHeads(16)(voxels.replace(feats=torch.zeros(3, 4)))
