"""Naive references for oddsparse.ops: Python loops written for clarity, differentiable."""
from __future__ import annotations

import torch
from torch import Tensor


def _segments(src: Tensor, index: Tensor, dim_size: int) -> list[list[Tensor]]:
    rows: list[list[Tensor]] = [[] for _ in range(dim_size)]
    for row, segment in enumerate(index.tolist()):
        rows[segment].append(src[row])
    return rows


def scatter_sum_reference(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """(S, ...) sum of the rows of src (N, ...) with index (N,) == s; empty segments 0."""
    out = []
    for members in _segments(src, index, dim_size):
        total = torch.zeros_like(src[0]) if src.shape[0] else src.new_zeros(src.shape[1:])
        for row in members:
            total = total + row
        out.append(total)
    return torch.stack(out) if out else src.new_zeros((0, *src.shape[1:]))


def scatter_mean_reference(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """(S, ...) mean of the rows in each segment; empty segments 0."""
    sums = scatter_sum_reference(src, index, dim_size)
    counts = [max(1, int((index == segment).sum())) for segment in range(dim_size)]
    return torch.stack([sums[segment] / counts[segment] for segment in range(dim_size)]) if dim_size else sums


def scatter_max_reference(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """(S, ...) elementwise max of the rows in each segment; empty segments 0."""
    out = []
    for members in _segments(src, index, dim_size):
        if members:
            out.append(torch.stack(members).max(dim=0).values)
        else:
            out.append(src.new_zeros(src.shape[1:]))
    return torch.stack(out) if out else src.new_zeros((0, *src.shape[1:]))
