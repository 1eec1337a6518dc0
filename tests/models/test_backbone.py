"""SparseUNet3d (spconv) against its dense nn.Conv3d twin with copied weights, forward and backward.

The dense twin zero-fills the grid and masks each level; at the active voxels it must equal the
sparse network exactly (float64 to 1e-10; spconv runs float64 on CPU).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from oddsparse import SparseVoxels, VoxelGrid
from oddsparse.models.backbone import DenseUNet3d, SparseUNet3d, build_backbone, copy_sparse_to_dense

pytest.importorskip("spconv.pytorch")

CHANNELS = (8, 12, 16, 20)


@pytest.fixture(autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def make_voxels(seed: int, dtype=torch.float64, batch=2, shape=(16, 16, 8), in_channels=5, fraction=0.12):
    """Random occupied sites (blobs plus scattered voxels) in row order shuffled, random features."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, *shape, generator=gen) < fraction
    mask[0, 2:6, 3:7, 0:3] = True  # a solid blob so that convolutions see full neighbourhoods
    if batch > 1:
        mask[1] = False  # the second scene is sparser
        mask[1, 9:12, 1:3, 4:8] = True
        mask[1, shape[0] - 1, shape[1] - 1, shape[2] - 1] = True  # a corner voxel
    coords = torch.nonzero(mask).to(torch.int32)
    coords = coords[torch.randperm(len(coords), generator=gen)]  # order must not matter
    feats = torch.randn(len(coords), in_channels, generator=gen, dtype=dtype)
    return SparseVoxels(coords=coords, feats=feats, batch_size=batch, grid=VoxelGrid(shape=shape))


def twins(dtype, blocks=2, seed=0, in_channels=5, channels=CHANNELS):
    torch.manual_seed(seed)
    sparse = SparseUNet3d(in_channels, channels=channels, blocks=blocks).to(dtype)
    dense = DenseUNet3d(in_channels, channels=channels, blocks=blocks).to(dtype)
    with torch.no_grad():  # non-trivial LayerNorm affine parameters
        for norm in sparse.norms.values():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.3, 0.3)
    copy_sparse_to_dense(sparse, dense)
    return sparse, dense


def _weight_grad_as_dense(sparse, name, kind):
    layout = (4, 0, 1, 2, 3) if kind == "up" else (0, 4, 1, 2, 3)
    return sparse.convs[name].weight.grad.permute(*layout)


@pytest.mark.parametrize("blocks", [1, 2])
def test_sparse_matches_dense_twin_float64(blocks):
    sparse, dense = twins(torch.float64, blocks=blocks)
    voxels = make_voxels(seed=blocks)
    feats_sparse = voxels.feats.clone().requires_grad_(True)
    feats_dense = voxels.feats.clone().requires_grad_(True)
    out_sparse = sparse(voxels.replace(feats=feats_sparse))
    out_dense = dense(voxels.replace(feats=feats_dense))
    assert torch.equal(out_sparse.coords, voxels.coords) and torch.equal(out_dense.coords, voxels.coords)
    assert out_sparse.feats.shape == (voxels.num_voxels, CHANNELS[0])
    assert out_sparse.feats.abs().mean() > 0.1  # not a degenerate all-zero output
    torch.testing.assert_close(out_sparse.feats, out_dense.feats, rtol=0, atol=1e-10)

    weights = torch.randn_like(out_sparse.feats)
    (out_sparse.feats * weights).sum().backward()
    (out_dense.feats * weights).sum().backward()
    torch.testing.assert_close(feats_sparse.grad, feats_dense.grad, rtol=0, atol=1e-10)
    assert feats_sparse.grad.abs().mean() > 1e-3
    for name, kind, *_ in sparse.plan:
        grad_sparse = _weight_grad_as_dense(sparse, name, kind)
        scale = grad_sparse.abs().max().item()
        assert scale > 0, name
        torch.testing.assert_close(grad_sparse, dense.convs[name].weight.grad, rtol=0, atol=1e-10 * max(1.0, scale))
        torch.testing.assert_close(sparse.norms[name].weight.grad, dense.norms[name].weight.grad, rtol=0, atol=1e-9)
        torch.testing.assert_close(sparse.norms[name].bias.grad, dense.norms[name].bias.grad, rtol=0, atol=1e-9)


def test_sparse_matches_dense_twin_float32():
    sparse, dense = twins(torch.float32, seed=4)
    voxels = make_voxels(seed=7, dtype=torch.float32)
    feats_sparse = voxels.feats.clone().requires_grad_(True)
    feats_dense = voxels.feats.clone().requires_grad_(True)
    out_sparse = sparse(voxels.replace(feats=feats_sparse))
    out_dense = dense(voxels.replace(feats=feats_dense))
    torch.testing.assert_close(out_sparse.feats, out_dense.feats, rtol=1e-4, atol=1e-5)
    out_sparse.feats.square().sum().backward()
    out_dense.feats.square().sum().backward()
    torch.testing.assert_close(feats_sparse.grad, feats_dense.grad, rtol=1e-4, atol=1e-4)


def test_dense_twin_ignores_inactive_voxels_and_unmasked_mode_does_not():
    """Masking is what makes the twin exact: the unmasked dense U-Net differs at active voxels."""
    sparse, dense = twins(torch.float64, seed=2)
    voxels = make_voxels(seed=3)
    plain = DenseUNet3d(5, channels=CHANNELS, masked=False).to(torch.float64)
    copy_sparse_to_dense(sparse, plain)
    masked_out = dense(voxels).feats
    plain_out = plain(voxels).feats
    assert (masked_out - plain_out).abs().max() > 1e-3
    assert build_backbone("dense", 5, channels=CHANNELS, masked=False).masked is False
    assert isinstance(build_backbone("sparse", 5, channels=CHANNELS), SparseUNet3d)
    with pytest.raises(ValueError, match="kind"):
        build_backbone("octree", 5)


def test_weight_layout_on_a_single_subm_layer():
    """Hand check of the layout conversion: one SubM unit equals F.conv3d + LayerNorm + ReLU on the dense grid."""
    sparse, dense = twins(torch.float64, blocks=1, channels=(6,))
    voxels = make_voxels(seed=5, batch=1, shape=(8, 6, 4))
    dense_in = voxels.dense()  # (1, 5, 8, 6, 4)
    weight = sparse.convs["enc0_0"].weight.detach()  # (6, 3, 3, 3, 5)
    reference = torch.zeros(1, 6, 8, 6, 4, dtype=torch.float64)
    padded = F.pad(dense_in, (1, 1, 1, 1, 1, 1))
    for dx in range(3):  # naive sum over kernel offsets
        for dy in range(3):
            for dz in range(3):
                window = padded[:, :, dx:dx + 8, dy:dy + 6, dz:dz + 4]
                reference += torch.einsum("oc,bcxyz->boxyz", weight[:, dx, dy, dz, :], window)
    norm = sparse.norms["enc0_0"]
    reference = F.relu(F.layer_norm(reference.movedim(1, -1), (6,), norm.weight, norm.bias))
    b, x, y, z = voxels.coords.long().unbind(1)
    expected = reference[b, x, y, z]
    torch.testing.assert_close(sparse(voxels).feats, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(dense(voxels).feats, expected, rtol=0, atol=1e-12)


def test_rejects_bad_input():
    sparse, dense = twins(torch.float64)
    voxels = make_voxels(seed=0)
    with pytest.raises(ValueError, match="in_channels=5"):
        sparse(voxels.replace(feats=voxels.feats[:, :3]))
    odd = make_voxels(seed=0, shape=(12, 16, 8))
    with pytest.raises(ValueError, match=r"divisible by 2 \*\* \(len\(channels\) - 1\) = 8"):
        dense(odd)
    with pytest.raises(ValueError, match="differ"):
        copy_sparse_to_dense(sparse, DenseUNet3d(5, channels=(8, 12)))
    empty = voxels.select(torch.zeros(voxels.num_voxels, dtype=torch.bool))
    assert sparse(empty).feats.shape == (0, CHANNELS[0])


def test_sparse_forward_restores_thread_count():
    sparse, _ = twins(torch.float64)
    torch.set_num_threads(2)
    sparse(make_voxels(seed=1))
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("blocks", [1, 2])
def test_layout_is_the_module_docstrings_architecture(blocks):
    """Every unit of a 3-scale U-Net, written out from the module docstring (the dense twin is built from the
    same plan, so a twin comparison cannot see a layout both share)."""
    c = (4, 8, 16)
    want = [("enc0_0", "SubMConv3d", 5, 4, 3)] + [("enc0_1", "SubMConv3d", 4, 4, 3)] * (blocks - 1)
    for level in (1, 2):
        want += [(f"down{level}", "SparseConv3d", c[level - 1], c[level], 2)]
        want += [(f"enc{level}_{i}", "SubMConv3d", c[level], c[level], 3) for i in range(blocks)]
    for level in (1, 0):
        want += [(f"up{level}", "SparseInverseConv3d", c[level + 1], c[level], 2),
                 (f"dec{level}_0", "SubMConv3d", 2 * c[level], c[level], 3)]
        want += [(f"dec{level}_1", "SubMConv3d", c[level], c[level], 3)] * (blocks - 1)
    net = SparseUNet3d(5, c, blocks=blocks)
    got = [(name, type(conv).__name__, conv.in_channels, conv.out_channels, tuple(conv.kernel_size))
           for name, conv in net.convs.items()]
    assert got == [(name, kind, c_in, c_out, (k, k, k)) for name, kind, c_in, c_out, k in want]
    assert [tuple(net.convs[name].stride) for name in ("down1", "down2")] == [(2, 2, 2)] * 2
    assert list(net.norms) == [name for name, *_ in want]
