"""Measure a stage-1 scene model on held-out scenes against its starting point, and draw the figure.

    python recipes/report_stage1.py --checkpoint runs/partsad/stage1.pt --out docs/stage1 [--scenes 12]

Evaluates, on the test split of the checkpoint's dataset (input views and disjoint novel target
views): novel-view PSNR (objects on black, as the model renders them) and mask IoU of the rendered
target views, carving recall (GT object voxels kept) and occupancy (grid kept), for the trained
weights and for the same architecture at its initialisation (seeded as the recipe seeds it).
Carving uses the predicted foreground (never GT masks); the GT-mask carving is reported as an upper
bound. Writes ``<out>/stage1_report.json`` and ``<out>/stage1_<scene>.png`` (rendered vs real views
and the first 3 PCA components of the rendered features as RGB, like the paper's Fig. 4).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    import oddsparse  # noqa: F401
except ModuleNotFoundError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from oddsparse.data import SceneDataset
from oddsparse.eval.reconstruction import evaluate_reconstruction, figure_reconstruction
from oddsparse.models.detector import build_detector
from oddsparse.utils.checkpoint import atomic_write_bytes, load_checkpoint


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scenes", type=int, default=12, help="test scenes to evaluate")
    parser.add_argument("--input-views", type=int, default=None, help="default: the checkpoint's")
    parser.add_argument("--target-views", type=int, default=3)
    parser.add_argument("--num-samples", type=int, default=64)
    args = parser.parse_args(argv)

    checkpoint = load_checkpoint(args.checkpoint)
    config = checkpoint["config"]
    torch.manual_seed(config["seed"])
    initial = build_detector(checkpoint["scene_kwargs"], checkpoint["detector_kwargs"]).scene_model.eval()
    trained = build_detector(checkpoint["scene_kwargs"], checkpoint["detector_kwargs"])
    trained.load_state_dict(checkpoint["model"])
    trained = trained.scene_model.eval()
    image_size = tuple(checkpoint["image_size"])
    dataset = SceneDataset(checkpoint["data_root"], "test", family=checkpoint["family"],
                           num_input_views=args.input_views or config["input_views"],
                           num_target_views=args.target_views, image_size=image_size, seed=1234)
    settings = dict(num_samples=args.num_samples, max_scenes=args.scenes)
    with torch.no_grad():
        report = {
            "checkpoint": str(args.checkpoint), "stage1_steps": checkpoint["step"], "test_scenes": min(args.scenes, len(dataset)),
            "image_size": list(image_size), "input_views": dataset.num_input_views, "target_views": args.target_views,
            "initial": evaluate_reconstruction(initial, dataset, **settings),
            "trained": evaluate_reconstruction(trained, dataset, **settings),
            "trained_gt_carving": evaluate_reconstruction(trained, dataset, carve_masks=True, **settings),
        }
        args.out.mkdir(parents=True, exist_ok=True)
        for index in range(min(2, len(dataset))):
            item = dataset[index]
            name = item["inputs"].name
            figure_reconstruction(trained, item["inputs"], item["targets"], args.out / f"stage1_{name}.png",
                                  num_samples=args.num_samples)
    for key in ("initial", "trained", "trained_gt_carving"):
        report[key] = {k: v for k, v in report[key].items() if not isinstance(v, list)}
    atomic_write_bytes(args.out / "stage1_report.json", (json.dumps(report, indent=2) + "\n").encode())
    for key in ("initial", "trained", "trained_gt_carving"):
        print(key, " ".join(f"{k}={v:.4f}" for k, v in report[key].items() if isinstance(v, float)))
    return report


if __name__ == "__main__":
    main()
