"""3D encoder-decoder on voxel features: a sparse U-Net (spconv) and its dense twin (``nn.Conv3d``).

Both networks take and return :class:`~oddsparse.structures.SparseVoxels`: the output has the
input's sites, in the same row order, with ``out_channels = channels[0]`` features.

Architecture (L = ``len(channels)`` scales, c_l = ``channels[l]``; every *unit* is
convolution -> LayerNorm over channels -> ReLU):

- level 0: a 3x3x3 submanifold unit ``in_channels -> c_0``, then ``blocks - 1`` units ``c_0 -> c_0``;
- level l = 1 .. L-1: a 2x2x2 stride-2 sparse convolution unit ``c_{l-1} -> c_l`` (``SparseConv3d``),
  then ``blocks`` submanifold units ``c_l -> c_l``;
- decoder, l = L-2 .. 0: ``SparseInverseConv3d`` unit ``c_{l+1} -> c_l`` back onto the sites of
  level l (the down-convolution's rulebook, shared through ``indice_key``), concatenated with the
  level-l skip features, then a submanifold unit ``2 c_l -> c_l`` and ``blocks - 1`` units ``c_l -> c_l``.

The active sites of level l+1 are the 2x2x2 parents of level l's sites. The down-sampling kernel is
2x2x2 with stride 2 (non-overlapping), so each grid axis must be divisible by ``2 ** (L - 1)``
(96 x 96 x 16 with 4 scales).

Normalisation is a LayerNorm over the channels of each voxel: it never mixes voxels, so the
dense twin is exact without masked batch statistics, and it behaves the same in training and
evaluation and for any batch size (a scene batch here is 1-4 scenes).

The dense twin zero-fills the inactive voxels, runs the same layers with ``nn.Conv3d`` /
``nn.ConvTranspose3d``, and multiplies by each level's occupancy mask after every unit
(``masked=True``): its outputs then equal the sparse network's at the active voxels when the
weights are copied with :func:`copy_sparse_to_dense`. With ``masked=False`` it is a plain dense
U-Net on the zero-filled grid (same cost; used as the benchmark baseline).
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oddsparse.structures.sparse import SparseVoxels

__all__ = ["SparseUNet3d", "DenseUNet3d", "build_backbone", "copy_sparse_to_dense"]


def _check_config(channels: Sequence[int], blocks: int) -> tuple[int, ...]:
    channels = tuple(int(c) for c in channels)
    if len(channels) < 1 or min(channels) <= 0:
        raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels}")
    if blocks < 1:
        raise ValueError(f"blocks must be >= 1, got {blocks}")
    return channels


def _check_input(voxels: SparseVoxels, in_channels: int, num_scales: int, name: str) -> None:
    if not isinstance(voxels, SparseVoxels):
        raise TypeError(f"{name} expects SparseVoxels, got {type(voxels).__name__}")
    if voxels.num_channels != in_channels:
        raise ValueError(f"{name}: voxels.feats has {voxels.num_channels} channels, expected in_channels={in_channels}")
    factor = 2 ** (num_scales - 1)
    if any(size % factor for size in voxels.grid.shape):
        raise ValueError(f"{name}: every axis of voxels.grid.shape {voxels.grid.shape} must be divisible by "
                         f"2 ** (len(channels) - 1) = {factor}")


def _unit_plan(in_channels: int, channels: tuple[int, ...], blocks: int):
    """The layers shared by both twins, as (name, kind, c_in, c_out, level) tuples.

    kind: "subm" (3x3x3, same sites), "down" (2x2x2 stride 2, level-1 -> level), "up" (transpose of
    the down convolution of ``level + 1``, back to level).
    """
    plan = [("enc0_0", "subm", in_channels, channels[0], 0)]
    plan += [(f"enc0_{i}", "subm", channels[0], channels[0], 0) for i in range(1, blocks)]
    for level in range(1, len(channels)):
        plan.append((f"down{level}", "down", channels[level - 1], channels[level], level))
        plan += [(f"enc{level}_{i}", "subm", channels[level], channels[level], level) for i in range(blocks)]
    for level in reversed(range(len(channels) - 1)):
        plan.append((f"up{level}", "up", channels[level + 1], channels[level], level))
        plan.append((f"dec{level}_0", "subm", 2 * channels[level], channels[level], level))
        plan += [(f"dec{level}_{i}", "subm", channels[level], channels[level], level) for i in range(1, blocks)]
    return plan


class SparseUNet3d(nn.Module):
    """Sparse 4-scale U-Net on spconv (see the module docstring for the architecture).

    Args:
        in_channels: C_in, channels of the input voxel features.
        channels: widths of the scales, finest first.
        blocks: submanifold units per encoder scale (and per decoder scale, counting the fusion unit).

    spconv on CPU runs through the guard of :mod:`oddsparse.ops.spconv_cpu` (single-threaded).

    Example:
        >>> from oddsparse.geometry.grid import VoxelGrid
        >>> grid = VoxelGrid(shape=(16, 16, 8))
        >>> dense = torch.zeros(1, 4, 16, 16, 8); dense[0, :, 4:8, 4:8, 0:3] = 1.0
        >>> net = SparseUNet3d(4, channels=(8, 16, 16, 16))
        >>> out = net(SparseVoxels.from_dense(dense, grid))
        >>> out.feats.shape
        torch.Size([48, 8])
    """

    def __init__(self, in_channels: int, channels: Sequence[int] = (32, 64, 128, 256), blocks: int = 2):
        super().__init__()
        from oddsparse._backends import require_spconv

        spconv = require_spconv()
        self.in_channels = in_channels
        self.channels = _check_config(channels, blocks)
        self.out_channels = self.channels[0]
        self.blocks = blocks
        self.plan = _unit_plan(in_channels, self.channels, blocks)
        self.convs = nn.ModuleDict()
        self.norms = nn.ModuleDict()
        for name, kind, c_in, c_out, level in self.plan:
            if kind == "subm":
                conv = spconv.SubMConv3d(c_in, c_out, 3, padding=1, bias=False, indice_key=f"subm{level}")
            elif kind == "down":
                conv = spconv.SparseConv3d(c_in, c_out, 2, stride=2, bias=False, indice_key=f"down{level}")
            else:
                conv = spconv.SparseInverseConv3d(c_in, c_out, 2, bias=False, indice_key=f"down{level + 1}")
            self.convs[name] = conv
            self.norms[name] = nn.LayerNorm(c_out)

    def _unit(self, name: str, tensor):
        tensor = self.convs[name](tensor)
        return tensor.replace_feature(F.relu(self.norms[name](tensor.features)))

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        """voxels with feats (N, C_in) -> same sites with feats (N, channels[0]).

        On CPU the forward pass runs with one torch thread: the spconv guard runs every sparse
        convolution single-threaded anyway, and switching the thread count around each of them
        makes the small per-voxel ops in between (LayerNorm, ReLU) wait for the thread pool.
        """
        _check_input(voxels, self.in_channels, len(self.channels), "SparseUNet3d")
        if voxels.num_voxels == 0:
            return voxels.replace(feats=voxels.feats.new_zeros(0, self.out_channels))
        previous = torch.get_num_threads()
        if voxels.feats.is_cuda or previous == 1:
            return self._forward(voxels)
        torch.set_num_threads(1)
        try:
            return self._forward(voxels)
        finally:
            torch.set_num_threads(previous)

    def _forward(self, voxels: SparseVoxels) -> SparseVoxels:
        from oddsparse._backends import require_spconv

        # spconv reads raw memory: coords from torch.nonzero are column-major, so force row-major.
        tensor = require_spconv().SparseConvTensor(voxels.feats.contiguous(), voxels.coords.contiguous(),
                                               list(voxels.grid.shape), voxels.batch_size)
        skips = {}
        for name, kind, _, _, level in self.plan:
            if kind == "up":
                tensor = self._unit(name, tensor)
                tensor = tensor.replace_feature(torch.cat([tensor.features, skips[level].features], dim=1))
                continue
            if kind == "down":
                skips[level - 1] = tensor
            tensor = self._unit(name, tensor)
        # The inverse convolutions return exactly the level-0 input sites, in input order.
        if not torch.equal(tensor.indices, voxels.coords):
            raise RuntimeError("SparseUNet3d: output sites differ from the input sites (spconv rulebook error)")
        return voxels.replace(feats=tensor.features)


class DenseUNet3d(nn.Module):
    """Dense twin of :class:`SparseUNet3d`: same layers and parameter names, on ``nn.Conv3d``.

    Args:
        in_channels, channels, blocks: as for :class:`SparseUNet3d`.
        masked: multiply by each level's occupancy mask after every unit, so that outputs equal the
            sparse network's at the active voxels (True), or run a plain dense U-Net on the
            zero-filled grid (False). Both cost the same convolutions.

    Example:
        >>> from oddsparse.geometry.grid import VoxelGrid
        >>> dense = torch.zeros(1, 4, 16, 16, 8); dense[0, :, 4:8, 4:8, 0:3] = 1.0
        >>> net = DenseUNet3d(4, channels=(8, 16, 16, 16))
        >>> net(SparseVoxels.from_dense(dense, VoxelGrid(shape=(16, 16, 8)))).feats.shape
        torch.Size([48, 8])
    """

    def __init__(self, in_channels: int, channels: Sequence[int] = (32, 64, 128, 256), blocks: int = 2,
                 masked: bool = True):
        super().__init__()
        self.in_channels = in_channels
        self.channels = _check_config(channels, blocks)
        self.out_channels = self.channels[0]
        self.blocks = blocks
        self.masked = masked
        self.plan = _unit_plan(in_channels, self.channels, blocks)
        self.convs = nn.ModuleDict()
        self.norms = nn.ModuleDict()
        for name, kind, c_in, c_out, _ in self.plan:
            if kind == "subm":
                conv = nn.Conv3d(c_in, c_out, 3, padding=1, bias=False)
            elif kind == "down":
                conv = nn.Conv3d(c_in, c_out, 2, stride=2, bias=False)
            else:
                conv = nn.ConvTranspose3d(c_in, c_out, 2, stride=2, bias=False)
            self.convs[name] = conv
            self.norms[name] = nn.LayerNorm(c_out)

    def _unit(self, name: str, grid: Tensor, mask: Tensor | None) -> Tensor:
        grid = self.convs[name](grid)  # (B, C, X_l, Y_l, Z_l)
        grid = F.relu(self.norms[name](grid.movedim(1, -1))).movedim(-1, 1)  # LayerNorm over C per voxel
        return grid * mask if mask is not None else grid

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        """voxels with feats (N, C_in) -> same sites with feats (N, channels[0])."""
        _check_input(voxels, self.in_channels, len(self.channels), "DenseUNet3d")
        grid = voxels.dense()  # (B, C_in, X, Y, Z), zeros at inactive voxels
        masks = [None] * len(self.channels)
        if self.masked:
            occupancy = voxels.replace(feats=voxels.feats.new_ones(voxels.num_voxels, 1)).dense()  # (B, 1, X, Y, Z)
            masks[0] = occupancy
            for level in range(1, len(self.channels)):  # a coarse voxel is active when any child is
                masks[level] = F.max_pool3d(masks[level - 1], kernel_size=2, stride=2)
        skips = {}
        for name, kind, _, _, level in self.plan:
            if kind == "down":
                skips[level - 1] = grid
            grid = self._unit(name, grid, masks[level])
            if kind == "up":
                grid = torch.cat([grid, skips[level]], dim=1)
        b, x, y, z = voxels.coords.long().unbind(dim=1)
        return voxels.replace(feats=grid.movedim(1, -1)[b, x, y, z])  # (N, channels[0])


def build_backbone(kind: Literal["sparse", "dense"], in_channels: int, channels: Sequence[int] = (32, 64, 128, 256),
                   blocks: int = 2, masked: bool = True) -> nn.Module:
    """The 3D backbone: ``kind="sparse"`` (spconv, default choice) or ``"dense"`` (its ``nn.Conv3d`` twin).

    ``masked`` applies to the dense twin only.
    """
    if kind == "sparse":
        return SparseUNet3d(in_channels, channels=channels, blocks=blocks)
    if kind == "dense":
        return DenseUNet3d(in_channels, channels=channels, blocks=blocks, masked=masked)
    raise ValueError(f"build_backbone: kind must be 'sparse' or 'dense', got {kind!r}")


@torch.no_grad()
def copy_sparse_to_dense(sparse_net: SparseUNet3d, dense_net: DenseUNet3d) -> DenseUNet3d:
    """Copy the weights of ``sparse_net`` into ``dense_net`` (same configuration); returns ``dense_net``.

    spconv 2.3 stores convolution weights as ``(C_out, kx, ky, kz, C_in)`` (checked here); the kernel
    axes follow the sparse coordinates ``(ix, iy, iz)``, which are the dense ``(X, Y, Z)`` axes:

    - ``SubMConv3d`` / ``SparseConv3d`` -> ``nn.Conv3d`` ``(C_out, C_in, kx, ky, kz)``: ``permute(0, 4, 1, 2, 3)``;
    - ``SparseInverseConv3d`` (C_in -> C_out) -> ``nn.ConvTranspose3d`` ``(C_in, C_out, kx, ky, kz)``:
      ``permute(4, 0, 1, 2, 3)``, without flipping the kernel (the inverse convolution applies the
      down-convolution's offsets in reverse, which is exactly a transposed convolution).

    LayerNorm parameters are copied as they are.
    """
    if (sparse_net.in_channels, sparse_net.channels, sparse_net.blocks) != (
            dense_net.in_channels, dense_net.channels, dense_net.blocks):
        raise ValueError("copy_sparse_to_dense: the networks differ in in_channels, channels or blocks")
    for name, kind, c_in, c_out, _ in sparse_net.plan:
        weight = sparse_net.convs[name].weight
        kernel = 3 if kind == "subm" else 2
        if tuple(weight.shape) != (c_out, kernel, kernel, kernel, c_in):
            raise ValueError(f"copy_sparse_to_dense: convs.{name}.weight has shape {tuple(weight.shape)}, expected "
                             f"spconv layout (C_out, kx, ky, kz, C_in) = {(c_out, kernel, kernel, kernel, c_in)}")
        layout = (4, 0, 1, 2, 3) if kind == "up" else (0, 4, 1, 2, 3)
        dense_net.convs[name].weight.copy_(weight.permute(*layout))
        dense_net.norms[name].load_state_dict(sparse_net.norms[name].state_dict())
    return dense_net
