"""spconv made correct on CPU (oddsparse.ops.spconv_cpu) against dense float64 twins.

Each layer (SubMConv3d, SparseConv3d with stride 2, SparseInverseConv3d) is compared, forward and
input/weight gradients, with ``torch.nn.functional.conv3d`` / ``conv_transpose3d`` in float64 on
a random sparse input, on 2 torch threads and repeated: without the guard spconv's CPU
convolution races on 2 threads and these comparisons fail (measured: most repetitions wrong).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

spconv = pytest.importorskip("spconv.pytorch", reason="spconv is not installed (pip install spconv)")

from oddsparse import SparseVoxels, VoxelGrid  # noqa: E402
from oddsparse.ops.spconv_cpu import (GUARDED_OPS, install_cpu_guard, is_cpu_guard_installed,  # noqa: E402
                                      maybe_install_cpu_guard, uninstall_cpu_guard)

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason="the CPU guard is installed only on machines without CUDA")

GRID = VoxelGrid(shape=(10, 10, 10))
BATCH, IN_CHANNELS, OUT_CHANNELS = 2, 4, 8
REPEATS = 30  # forward repetitions per layer; without the guard nearly every one is wrong on 2 threads
BACKWARD_REPEATS = 5
TOLERANCE = 1e-5  # float32 spconv vs float64 twin, relative to the largest reference magnitude (at least 1)


@pytest.fixture(autouse=True)
def two_threads_and_guard():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    assert install_cpu_guard()
    yield
    torch.set_num_threads(previous)
    install_cpu_guard()


def _random_sparse_input(seed: int):
    """(dense64 (B, C, X, Y, Z) float64 zero off the sites, mask (B, X, Y, Z), SparseVoxels float32)."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(BATCH, *GRID.shape, generator=generator) < 0.15
    dense64 = torch.randn(BATCH, IN_CHANNELS, *GRID.shape, generator=generator, dtype=torch.float64)
    dense64 = dense64 * mask[:, None]
    voxels = SparseVoxels.from_dense(dense64.float(), GRID, mask=mask)
    return dense64, mask, voxels


def _sites(coords: torch.Tensor, batch: int, shape) -> torch.Tensor:
    """(B, X, Y, Z) bool occupancy of (N, 4) coords."""
    occupancy = torch.zeros(batch, *shape, dtype=torch.bool)
    occupancy[tuple(coords.long().T)] = True
    return occupancy


def _at_sites(dense: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """(N, C) rows of dense (B, C, X, Y, Z) at coords (N, 4)."""
    index = coords.long()
    return dense.permute(0, 2, 3, 4, 1)[index[:, 0], index[:, 1], index[:, 2], index[:, 3]]


def _conv3d_weight(spconv_weight: torch.Tensor) -> torch.Tensor:
    """spconv 2.3.8 KRSC weight (O, kx, ky, kz, C) -> conv3d weight (O, C, kx, ky, kz), float64."""
    return spconv_weight.detach().double().permute(0, 4, 1, 2, 3).contiguous()


def _conv_transpose3d_weight(spconv_weight: torch.Tensor) -> torch.Tensor:
    """spconv KRSC weight (O, kx, ky, kz, C) of an inverse conv -> conv_transpose3d weight (C, O, kx, ky, kz)."""
    return spconv_weight.detach().double().permute(4, 0, 1, 2, 3).contiguous()


def _scaled_error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """max |actual - reference| / max(1, max |reference|)."""
    assert actual.shape == reference.shape, (actual.shape, reference.shape)
    scale = max(1.0, reference.abs().max().item())
    return (actual.double() - reference).abs().max().item() / scale


def _reference_grads(reference_out: torch.Tensor, out_coords, grad_rows, leaves):
    """Gradients of sum(reference_out at out_coords * grad_rows) w.r.t. float64 leaves."""
    loss = (_at_sites(reference_out, out_coords) * grad_rows.double()).sum()
    return torch.autograd.grad(loss, leaves)


def _check_layer(layer, make_input, reference_forward, weight_to_dense, expected_sites=None):
    """Compare a spconv layer against its dense twin, forward REPEATS times and backward.

    make_input() -> (SparseConvTensor with leaf float32 features, dense64 leaf input).
    reference_forward(dense64, weight64) -> dense float64 output (B, O, X', Y', Z').
    """
    sparse_in, dense_in = make_input()
    weight64 = weight_to_dense(layer.weight).requires_grad_()
    reference = reference_forward(dense_in, weight64)

    out = layer(sparse_in)
    out_coords = out.indices
    if expected_sites is not None:
        occupancy = _sites(out_coords, BATCH, reference.shape[2:])
        assert torch.equal(occupancy, expected_sites), "output sites differ from the dense receptive-field rule"
        assert out_coords.shape[0] == int(expected_sites.sum()), "duplicate output sites"
    expected = _at_sites(reference, out_coords)
    for repeat in range(REPEATS):
        features = layer(sparse_in).features
        error = _scaled_error(features, expected)
        assert error < TOLERANCE, f"forward repeat {repeat}: scaled error {error:.3g} vs dense float64 twin"

    generator = torch.Generator().manual_seed(123)
    grad_rows = torch.randn(out_coords.shape[0], reference.shape[1], generator=generator)
    grad_in_ref, grad_weight_ref = _reference_grads(reference, out_coords, grad_rows, (dense_in, weight64))
    grad_in_ref_rows = _at_sites(grad_in_ref, sparse_in.indices)
    grad_weight_ref = grad_weight_ref.permute(*_inverse_permutation(layer)).contiguous()
    for repeat in range(BACKWARD_REPEATS):
        layer.zero_grad()
        sparse_in.features.grad = None
        (layer(sparse_in).features * grad_rows).sum().backward()
        input_error = _scaled_error(sparse_in.features.grad, grad_in_ref_rows)
        weight_error = _scaled_error(layer.weight.grad, grad_weight_ref)
        assert input_error < TOLERANCE, f"backward repeat {repeat}: input grad scaled error {input_error:.3g}"
        assert weight_error < TOLERANCE, f"backward repeat {repeat}: weight grad scaled error {weight_error:.3g}"


def _inverse_permutation(layer):
    # dense weight grads come back in the dense layout; map them to spconv's (O, kx, ky, kz, C)
    if getattr(layer, "inverse", False):
        return (1, 2, 3, 4, 0)  # (C, O, kx, ky, kz) -> (O, kx, ky, kz, C)
    return (0, 2, 3, 4, 1)  # (O, C, kx, ky, kz) -> (O, kx, ky, kz, C)


def _to_spconv(voxels: SparseVoxels):
    sparse = voxels.to_spconv()
    # spconv reads indices through a raw pointer: non-contiguous ones give a silently wrong rulebook
    assert sparse.indices.is_contiguous(), "SparseVoxels.to_spconv must pass contiguous coords to spconv"
    return sparse


def _leaf_input(voxels: SparseVoxels, dense64: torch.Tensor):
    features = voxels.feats.clone().requires_grad_()
    sparse_in = _to_spconv(voxels.replace(feats=features))
    return sparse_in, dense64.clone().requires_grad_()


def test_guard_is_installed_on_cpu_only_machine():
    assert is_cpu_guard_installed()
    ops = sys.modules["spconv.pytorch.ops"]
    assert ops.get_current_stream() == 0
    for name in GUARDED_OPS:
        assert hasattr(getattr(ops, name), "__wrapped__"), f"spconv.pytorch.ops.{name} is not guarded"


def test_install_is_idempotent_and_uninstall_restores():
    ops = sys.modules["spconv.pytorch.ops"]
    guarded = ops.indice_conv
    assert install_cpu_guard()
    assert ops.indice_conv is guarded, "a second install wrapped again"
    uninstall_cpu_guard()
    assert not is_cpu_guard_installed()
    assert ops.indice_conv is guarded.__wrapped__
    assert not hasattr(ops.indice_conv, "__wrapped__")
    with pytest.raises((RuntimeError, AssertionError)):  # the unpatched stream asks CUDA
        ops.get_current_stream()
    assert install_cpu_guard()
    assert is_cpu_guard_installed()


def test_nothing_is_patched_when_cuda_is_available(monkeypatch):
    uninstall_cpu_guard()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert install_cpu_guard() is False
    assert maybe_install_cpu_guard() is False
    assert not is_cpu_guard_installed()
    ops = sys.modules["spconv.pytorch.ops"]
    assert not any(hasattr(getattr(ops, name), "__wrapped__") for name in GUARDED_OPS)


def test_maybe_install_skips_when_spconv_is_absent(monkeypatch):
    import oddsparse._backends as backends

    uninstall_cpu_guard()
    monkeypatch.setattr(backends, "has_spconv", lambda: False)
    assert maybe_install_cpu_guard() is False
    assert not is_cpu_guard_installed()
    monkeypatch.undo()
    assert maybe_install_cpu_guard() is True
    assert is_cpu_guard_installed()


def test_submconv3d_matches_dense_conv3d():
    torch.manual_seed(0)
    dense64, mask, voxels = _random_sparse_input(seed=1)
    layer = spconv.SubMConv3d(IN_CHANNELS, OUT_CHANNELS, 3, padding=1, bias=False, indice_key="subm1")
    assert tuple(layer.weight.shape) == (OUT_CHANNELS, 3, 3, 3, IN_CHANNELS)  # KRSC layout assumed by the twin

    def reference(dense_in, weight64):
        # submanifold: inputs only at active sites (dense_in is zero elsewhere), output read at input sites
        return F.conv3d(dense_in, weight64, padding=1)

    _check_layer(layer, lambda: _leaf_input(voxels, dense64), reference, _conv3d_weight, expected_sites=mask)
    assert torch.get_num_threads() == 2, "the guard did not restore the thread count"


def test_sparseconv3d_stride2_matches_dense_conv3d():
    torch.manual_seed(0)
    dense64, mask, voxels = _random_sparse_input(seed=2)
    layer = spconv.SparseConv3d(IN_CHANNELS, OUT_CHANNELS, 3, stride=2, padding=1, bias=False, indice_key="down1")
    # output sites: every site whose receptive field holds an input site
    expected_sites = F.max_pool3d(mask[:, None].float(), 3, stride=2, padding=1)[:, 0] > 0

    def reference(dense_in, weight64):
        return F.conv3d(dense_in, weight64, stride=2, padding=1)

    _check_layer(layer, lambda: _leaf_input(voxels, dense64), reference, _conv3d_weight,
                 expected_sites=expected_sites)


def test_sparseinverseconv3d_matches_dense_conv_transpose3d():
    torch.manual_seed(0)
    _, mask, voxels = _random_sparse_input(seed=3)
    down = spconv.SparseConv3d(IN_CHANNELS, OUT_CHANNELS, 3, stride=2, padding=1, bias=False, indice_key="down2")
    inverse = spconv.SparseInverseConv3d(OUT_CHANNELS, IN_CHANNELS, 3, bias=False, indice_key="down2")
    with torch.no_grad():
        coarse = down(_to_spconv(voxels))  # rulebook stored under "down2"; fresh features below
    coarse_shape = tuple(coarse.spatial_shape)
    generator = torch.Generator().manual_seed(4)
    coarse_feats64 = torch.randn(coarse.features.shape, generator=generator, dtype=torch.float64)

    def make_input():
        features = coarse_feats64.float().requires_grad_()
        sparse_in = coarse.replace_feature(features)
        coarse_dense = torch.zeros(BATCH, OUT_CHANNELS, *coarse_shape, dtype=torch.float64)
        index = coarse.indices.long()
        coarse_dense[index[:, 0], :, index[:, 1], index[:, 2], index[:, 3]] = coarse_feats64
        return sparse_in, coarse_dense.requires_grad_()

    def reference(dense_in, weight64):
        # transpose of the stride-2 conv, cropped back to the fine grid (output_padding fills 9 -> 10)
        output_padding = tuple(f - ((c - 1) * 2 - 2 + 3) for f, c in zip(GRID.shape, coarse_shape))
        return F.conv_transpose3d(dense_in, weight64, stride=2, padding=1, output_padding=output_padding)

    # inverse conv: output at exactly the fine input sites
    _check_layer(inverse, make_input, reference, _conv_transpose3d_weight, expected_sites=mask)


def test_import_oddsparse_installs_guard_and_plain_spconv_backward_works():
    """A fresh interpreter: ``import oddsparse`` then plain spconv layers train on CPU on 2 threads."""
    script = """
import torch, oddsparse
import spconv.pytorch as spconv
from oddsparse.ops.spconv_cpu import is_cpu_guard_installed
assert is_cpu_guard_installed(), "import oddsparse did not install the spconv CPU guard"
torch.set_num_threads(2)
torch.manual_seed(0)
coords = torch.unique(torch.randint(0, 8, (60, 3)), dim=0)
coords = torch.cat([torch.zeros(len(coords), 1, dtype=torch.long), coords], 1).int()
feats = torch.randn(len(coords), 3, requires_grad=True)
x = spconv.SparseConvTensor(feats, coords, [8, 8, 8], 1)
net = spconv.SparseSequential(spconv.SubMConv3d(3, 4, 3, indice_key="a"),
                              spconv.SparseConv3d(4, 4, 3, stride=2, padding=1, indice_key="b"),
                              spconv.SparseInverseConv3d(4, 2, 3, indice_key="b"))
net(x).features.square().sum().backward()
assert feats.grad is not None and torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0
assert torch.get_num_threads() == 2
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
