"""Sparse voxel attention (variant "full") vs vanilla scene attention (variant "B"): time and peak memory.

One scene of 3, 6 and 12 objects, each object volume 8^3 with 30-50 % occupied cells, paper sizes
(dim 128, 8 heads, 3 blocks, k 20, beta 128), one training step (forward + backward of the whole
matcher; the two variants differ only in the attention). Each measurement runs in a fresh
subprocess: peak memory = peak resident set size minus the resident size after setup (on CUDA:
``torch.cuda.max_memory_allocated`` minus the allocation after setup).

Last line: key=value pairs, ratios sparse / vanilla (< 1: sparse is cheaper).

    python benchmarks/bench_matcher.py [--counts 3 6 12] [--repeats 1]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def worker(variant: str, num_objects: int, repeats: int, device: str) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from oddsparse.models.matcher import AnomalyMatcher, build_object_tokens

    torch.manual_seed(0)
    channels, r = 32, 8
    fraction = torch.empty(num_objects).uniform_(0.3, 0.5)
    occupancy = (torch.rand(num_objects, r, r, r) < fraction[:, None, None, None]).float()
    tokens = build_object_tokens(torch.randn(num_objects, channels, r, r, r), occupancy, threshold=0.5,
                                 beta=torch.randn(num_objects, 128, r, r, r))
    tokens = tokens.replace(feats=tokens.feats.to(device), cells=tokens.cells.to(device),
                            object_index=tokens.object_index.to(device), scene_index=tokens.scene_index.to(device),
                            beta=tokens.beta.to(device))
    matcher = AnomalyMatcher(channels, variant=variant).to(device)
    small = build_object_tokens(torch.randn(2, channels, r, r, r), occupancy[:2], threshold=0.5,
                                beta=torch.randn(2, 128, r, r, r))
    matcher(small.replace(feats=small.feats.to(device), cells=small.cells.to(device),
                          object_index=small.object_index.to(device), scene_index=small.scene_index.to(device),
                          beta=small.beta.to(device))).sum().backward()  # warm-up (allocator, kernels)
    matcher.zero_grad(set_to_none=True)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _current_rss_bytes()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matcher(tokens).sum().backward()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        matcher.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"time_s": min(times), "peak_mb": max(0, peak - base) / 2 ** 20, "tokens": tokens.num_tokens}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[3, 6, 12])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "OBJECTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.repeats, args.device)))
        return
    pairs = []
    for count in args.counts:
        result = {}
        for variant in ("full", "B"):
            out = subprocess.run([sys.executable, __file__, "--worker", variant, str(count), "--repeats",
                                  str(args.repeats), "--device", args.device], capture_output=True, text=True,
                                 check=True)
            result[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        sparse, vanilla = result["full"], result["B"]
        print(f"objects={count:2d} tokens={sparse['tokens']:5d}  sparse {sparse['time_s']:.3f} s "
              f"{sparse['peak_mb']:.0f} MB  vanilla {vanilla['time_s']:.3f} s {vanilla['peak_mb']:.0f} MB", flush=True)
        pairs += [f"time_ratio_{count}obj={sparse['time_s'] / vanilla['time_s']:.3f}",
                  f"memory_ratio_{count}obj={sparse['peak_mb'] / max(vanilla['peak_mb'], 1e-3):.3f}",
                  f"sparse_time_{count}obj_s={sparse['time_s']:.3f}", f"vanilla_time_{count}obj_s={vanilla['time_s']:.3f}",
                  f"sparse_peak_{count}obj_mb={sparse['peak_mb']:.1f}", f"vanilla_peak_{count}obj_mb={vanilla['peak_mb']:.1f}"]
    print(" ".join(pairs))


if __name__ == "__main__":
    main()
