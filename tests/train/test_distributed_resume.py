"""train_stage under torchrun (2 gloo processes): a run stopped and resumed equals an uninterrupted one on every
rank, where each rank draws its own random numbers (as stage 2's box flips do) and a different count of them."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

WORKER = '''
import json, sys
import torch
from torch import nn
from oddsparse.train import engine

torch.set_num_threads(1)
run_dir, stop_after, start = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
dist = engine.init_distributed("cpu")
torch.manual_seed(0)  # every rank seeded alike, as the recipes do

class Items(list):
    def set_epoch(self, epoch):
        pass

engine.load_batch = lambda dataset, indices, epochs: {"items": torch.tensor(indices)}
engine.prepare_batch = lambda batch, device: batch

class Objective(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.full((1,), start))  # a resumed process must take w from the checkpoint

    def forward(self, batch, teacher):
        draws = torch.rand(int(batch["items"].sum()) + 1 + 5 * dist.rank)  # a count that differs per rank and step
        return ((self.w - draws.mean()) ** 2).sum(), {}

objective = Objective()
optimizer = torch.optim.SGD(objective.parameters(), lr=0.5)
result = engine.train_stage(stage=2, objective=objective, model=objective, optimizer=optimizer, dataset=Items(range(6)),
                            steps=4, batch_size=2, seed=0, run_dir=run_dir, checkpoint_payload={}, checkpoint_every=0,
                            log_every=0, dist=dist, stop_after=None if stop_after < 0 else stop_after, progress=False)
print("RESULT " + json.dumps({"rank": dist.rank, "losses": result["losses"], "w": float(objective.w)}), flush=True)
engine.close_distributed()
'''


def _run(script: Path, run_dir: Path, stop_after: int, start: float) -> dict[int, dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
               str(run_dir), str(stop_after), str(start)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    # the two ranks write to one pipe: a line may hold both results (each a flat JSON object), so find each
    rows = [json.loads(match) for match in re.findall(r"RESULT (\{[^{}]*\})", done.stdout)]
    assert sorted(row["rank"] for row in rows) == [0, 1], done.stdout[-3000:]
    return {row["rank"]: row for row in rows}


def test_a_resumed_distributed_stage_equals_an_uninterrupted_one_on_every_rank(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    whole = _run(script, tmp_path / "whole", -1, 0.0)
    first = _run(script, tmp_path / "split", 2, 0.0)
    second = _run(script, tmp_path / "split", -1, 5.0)  # w starts elsewhere: the checkpoint must set it
    for rank in (0, 1):
        assert first[rank]["losses"] + second[rank]["losses"] == whole[rank]["losses"], rank
        assert second[rank]["w"] == whole[rank]["w"]
