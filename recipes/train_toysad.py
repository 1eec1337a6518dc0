"""Train the odd-one-out detector on the ToysAD family: stage 1 (scene model), then stage 2 (matcher).

    python recipes/train_toysad.py                          # the embedded synthetic default (offline)
    python recipes/train_toysad.py --preset smoke --out /tmp/smoke   # < 1 minute: checks an install
    python recipes/train_toysad.py --preset full --data /data/ToysAD-8K --dinov2_path dinov2_vits14.pth
    torchrun --nproc_per_node 2 recipes/train_toysad.py     # DistributedDataParallel (gloo on CPU)

This is the recipe of ``train_partsad.py`` (read it top to bottom: config, presets, data, model,
teacher, stage 1, stage 2, evaluation) run with ``family="toys"``: the synthetic default is the toys
family, and a published ToysAD root uses its split JSON or, without one, the paper's seen/unseen
categories (test = seen + unseen). One recipe keeps the two datasets' training identical.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_partsad  # noqa: E402


def main(argv=None) -> dict:
    return train_partsad.main(argv, family="toys")


if __name__ == "__main__":
    from oddsparse.cli import report_bad_input

    sys.exit(report_bad_input("train_toysad.py", main))
