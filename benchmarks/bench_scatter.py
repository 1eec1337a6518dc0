"""Segment reductions, forward + backward: native torch vs torch_scatter, at a realistic size.

scatter_mean is the main figure; ``Tensor.scatter_reduce(reduce="mean")`` (the plain-torch
baseline the project first measured torch_scatter against) and scatter_max are timed too.
Variants run interleaved (one call of each per round) so that load from other processes hits
them alike. Prints one line per variant; the last line holds key=value pairs, with
``mean_torch_scatter_speedup = torch_ms / torch_scatter_ms`` (>1: torch_scatter faster), all
measured in this run.

Usage: python benchmarks/bench_scatter.py [--rows 200000 --channels 32 --segments 20000 --rounds 10]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from oddsparse._backends import has_torch_scatter
from oddsparse.ops import scatter_max, scatter_mean


def scatter_reduce_mean(src, index, dim_size):
    expanded = index.view(-1, 1).expand_as(src)
    return src.new_zeros((dim_size, src.shape[1])).scatter_reduce(0, expanded, src, reduce="mean", include_self=False)


def forward_backward_seconds(function, src, index, dim_size, grad_out):
    leaf = src.detach().requires_grad_()
    start = time.perf_counter()
    out = function(leaf, index, dim_size)
    middle = time.perf_counter()
    out.backward(grad_out)
    return middle - start, time.perf_counter() - middle


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--segments", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    src = torch.randn(args.rows, args.channels, generator=generator)
    index = torch.randint(0, args.segments, (args.rows,), generator=generator)
    grad_out = torch.randn(args.segments, args.channels, generator=generator)
    print(f"rows={args.rows} channels={args.channels} segments={args.segments} threads={torch.get_num_threads()}")

    variants = {
        "mean_torch": lambda s, i, n: scatter_mean(s, i, n, backend="torch"),
        "mean_scatter_reduce": scatter_reduce_mean,
        "max_torch": lambda s, i, n: scatter_max(s, i, n, backend="torch"),
    }
    if has_torch_scatter():
        variants["mean_torch_scatter"] = lambda s, i, n: scatter_mean(s, i, n, backend="torch_scatter")
        variants["max_torch_scatter"] = lambda s, i, n: scatter_max(s, i, n, backend="torch_scatter")
    times = {name: [] for name in variants}
    for round_index in range(args.rounds + 1):  # round 0 warms up
        for name, function in variants.items():
            seconds = forward_backward_seconds(function, src, index, args.segments, grad_out)
            if round_index:
                times[name].append(seconds)

    total_ms = {}
    for name, pairs in times.items():
        forward = 1e3 * statistics.median(pair[0] for pair in pairs)
        backward = 1e3 * statistics.median(pair[1] for pair in pairs)
        total_ms[name] = 1e3 * statistics.median(sum(pair) for pair in pairs)
        print(f"{name:>20}: forward {forward:8.2f} ms  backward {backward:8.2f} ms  total {total_ms[name]:8.2f} ms")

    summary = {f"{name}_ms": f"{value:.2f}" for name, value in total_ms.items()}
    summary["mean_torch_vs_scatter_reduce_speedup"] = f"{total_ms['mean_scatter_reduce'] / total_ms['mean_torch']:.2f}"
    if has_torch_scatter():
        summary["mean_torch_scatter_speedup"] = f"{total_ms['mean_torch'] / total_ms['mean_torch_scatter']:.2f}"
        summary["max_torch_scatter_speedup"] = f"{total_ms['max_torch'] / total_ms['max_torch_scatter']:.2f}"
    else:
        summary["mean_torch_scatter_speedup"] = summary["max_torch_scatter_speedup"] = "nan"
        summary["note"] = "torch_scatter_not_installed"
    print(" ".join(f"{key}={value}" for key, value in summary.items()))


if __name__ == "__main__":
    main()
