"""Sparse voxel attention (variant "full") vs vanilla scene attention (variant "B"): time and peak memory.

One scene of 3, 6 and 12 objects, each object volume 8^3 with 30-50 % occupied cells, paper sizes
(dim 128, 8 heads, 3 blocks, k 20, beta 128). Measured for both variants (they differ only in the
attention and, for sparse, the correspondence search):

- training step time: forward + backward of the whole matcher;
- inference time: one forward without autograd (the end-to-end target is 1 s per scene);
- peak memory of a training step, each variant in a fresh subprocess: peak resident set size (reset
  after setup) minus the resident size after setup (on CUDA: ``torch.cuda.max_memory_allocated``
  minus the allocation after setup).

Times are the best of ``--repeats`` runs of the two variants interleaved in one process, so that
load from other processes on a shared machine hits both alike.

Both attentions run as dense masked attention on the padded scene layout (the sparse one with a
bias that is zero exactly on each token's correspondences), so on CPU the sparse variant costs
vanilla's attention plus the correspondence search (top-k of beta similarities) and its
(T_max, T_max) bias: expect ratios a little above 1. Gathering each token's (O-1)k keys instead
measured 5-10x slower than the dense matrix products on CPU; the paper's saving of sparse attention
is GPU memory at high token counts, not CPU time at 3-12 objects.

Last line: key=value pairs, ratios sparse / vanilla (< 1: sparse is cheaper).

    python benchmarks/bench_matcher.py [--counts 3 6 12] [--repeats 2] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _memory import current_rss_bytes, peak_rss_bytes, reset_peak_rss  # noqa: E402
from oddsparse.models.matcher import AnomalyMatcher, ObjectTokens, build_object_tokens  # noqa: E402

CHANNELS, R, BETA = 32, 8, 128


def _to(tokens: ObjectTokens, device: str) -> ObjectTokens:
    return tokens.replace(feats=tokens.feats.to(device), cells=tokens.cells.to(device),
                          object_index=tokens.object_index.to(device), scene_index=tokens.scene_index.to(device),
                          beta=tokens.beta.to(device))


def make_tokens(num_objects: int, device: str, seed: int = 0) -> ObjectTokens:
    """One scene of ``num_objects`` random 8^3 object volumes, 30-50 % of the cells occupied."""
    gen = torch.Generator().manual_seed(seed)
    fraction = torch.empty(num_objects).uniform_(0.3, 0.5, generator=gen)
    occupancy = (torch.rand(num_objects, R, R, R, generator=gen) < fraction[:, None, None, None]).float()
    tokens = build_object_tokens(torch.randn(num_objects, CHANNELS, R, R, R, generator=gen), occupancy,
                                 threshold=0.5, beta=torch.randn(num_objects, BETA, R, R, R, generator=gen))
    return _to(tokens, device)


def make_matcher(variant: str, device: str) -> AnomalyMatcher:
    torch.manual_seed(0)
    matcher = AnomalyMatcher(CHANNELS, beta_channels=BETA, variant=variant).to(device)
    matcher(make_tokens(2, device, seed=1)).sum().backward()  # warm-up (allocator, kernels)
    matcher.zero_grad(set_to_none=True)
    return matcher


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_step(matcher: AnomalyMatcher, tokens: ObjectTokens, device: str) -> float:
    start = time.perf_counter()
    matcher(tokens).sum().backward()
    _sync(device)
    matcher.zero_grad(set_to_none=True)
    return time.perf_counter() - start


@torch.no_grad()
def inference(matcher: AnomalyMatcher, tokens: ObjectTokens, device: str) -> float:
    start = time.perf_counter()
    matcher(tokens)
    _sync(device)
    return time.perf_counter() - start


def memory_worker(variant: str, num_objects: int, device: str) -> dict:
    """Peak memory (MB) of one training step, in this (fresh) process."""
    tokens, matcher = make_tokens(num_objects, device), make_matcher(variant, device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()
        base = current_rss_bytes()
    train_step(matcher, tokens, device)
    peak = torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes()
    return {"peak_mb": max(0, peak - base) / 2 ** 20}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[3, 6, 12])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--memory-worker", nargs=2, metavar=("VARIANT", "OBJECTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker[0], int(args.memory_worker[1]), args.device)))
        return
    print(f"device={args.device} threads={torch.get_num_threads()} repeats={args.repeats}", flush=True)
    matchers = {variant: make_matcher(variant, args.device) for variant in ("full", "B")}
    pairs = []
    for count in args.counts:
        tokens = make_tokens(count, args.device)
        result = {variant: {"time_s": [], "forward_s": []} for variant in matchers}
        for _ in range(args.repeats):  # interleaved: both variants see the same machine load
            for variant, matcher in matchers.items():
                result[variant]["time_s"].append(train_step(matcher, tokens, args.device))
                result[variant]["forward_s"].append(inference(matcher, tokens, args.device))
        for variant in matchers:
            result[variant] = {key: min(values) for key, values in result[variant].items()}
            command = [sys.executable, __file__, "--memory-worker", variant, str(count), "--device", args.device]
            if args.threads:
                command += ["--threads", str(args.threads)]
            out = subprocess.run(command, capture_output=True, text=True, check=True)
            result[variant].update(json.loads(out.stdout.strip().splitlines()[-1]))
        sparse, vanilla = result["full"], result["B"]
        print(f"objects={count:2d} tokens={tokens.num_tokens:5d}  train step: sparse {sparse['time_s']:.3f} s "
              f"{sparse['peak_mb']:.0f} MB, vanilla {vanilla['time_s']:.3f} s {vanilla['peak_mb']:.0f} MB  "
              f"inference: sparse {sparse['forward_s']:.3f} s, vanilla {vanilla['forward_s']:.3f} s", flush=True)
        pairs += [f"time_ratio_{count}obj={sparse['time_s'] / vanilla['time_s']:.3f}",
                  f"forward_time_ratio_{count}obj={sparse['forward_s'] / vanilla['forward_s']:.3f}",
                  f"memory_ratio_{count}obj={sparse['peak_mb'] / max(vanilla['peak_mb'], 1e-3):.3f}",
                  f"sparse_time_{count}obj_s={sparse['time_s']:.3f}",
                  f"vanilla_time_{count}obj_s={vanilla['time_s']:.3f}",
                  f"sparse_forward_{count}obj_s={sparse['forward_s']:.3f}",
                  f"vanilla_forward_{count}obj_s={vanilla['forward_s']:.3f}",
                  f"sparse_peak_{count}obj_mb={sparse['peak_mb']:.1f}",
                  f"vanilla_peak_{count}obj_mb={vanilla['peak_mb']:.1f}"]
    print(" ".join(pairs))


if __name__ == "__main__":
    main()
