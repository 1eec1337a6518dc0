"""New box heads for one scene model: the size input and fragment targets (session 30).

    python docs/boxes_s30/box_heads.py runs/parts-s25/default-2b/final.pt runs/boxes-s30 --seeds 0 1 \
        --arms plain size cover
    python docs/boxes_s30/box_heads.py runs/parts-s25/default-2b/final.pt runs/boxes-s30 --seeds 2 --arms plain size

Caches the proposals of the checkpoint's scene model on every training scene once, then trains a new box head
per arm and seed (stage 2b's "fresh, fit all": every training scene, no hold-out, the recipe's steps, batch and
learning rate) and writes it as a detector checkpoint ``OUT/<arm>-seed<s>.pt`` with its test report
``OUT/<arm>-seed<s>/`` (``oddsparse eval``'s, 5 views, predicted boxes). A finished arm (its report present) is
skipped, so the script resumes; pair the reports with ``oddsparse compare``. Arms:

- ``plain``: the recipe's head (the baseline).
- ``size``: the head also reads each proposal's size (``box_head_size_input``). The RoI volume is stretched to
  the box, so a flat part's proposal one voxel tall (the carved hull's "tent", often twice the part's height)
  looks like a tall part's; on the default parts model 52 of the 110 GT objects its final boxes miss have a box
  height more than 25% off, most of them parts under 5 cm (``docs/fine_s29/missed_boxes.py``).
- ``cover``: fragment targets (``proposal_targets(..., cover=0.5)``): a proposal at least half inside a GT box is
  trained to grow to it instead of being dropped as a ghost, and the detector keeps one of overlapping refined
  boxes (``box_nms_iou=0.5``). Long thin parts whose density has a gap split into two proposals that the
  one-to-one targets teach the head to drop (``parts_0867``, ``parts_0903``: every proposal at objectness 0.00).

About 8 minutes per arm on 2 cores, plus 4 for the cache.
"""
import argparse
import copy
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from oddsparse.data import SceneDataset  # noqa: E402
from oddsparse.eval.evaluate import evaluate_detector, write_report  # noqa: E402
from oddsparse.models.box_head import BoxHead  # noqa: E402
from oddsparse.models.detector import load_detector  # noqa: E402
from oddsparse.train import engine  # noqa: E402
from oddsparse.utils.checkpoint import save_checkpoint  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("checkpoint")
parser.add_argument("out")
parser.add_argument("--seeds", type=int, nargs="+", default=[0])
parser.add_argument("--steps", type=int, default=1500)
parser.add_argument("--arms", nargs="+", default=["plain", "size"], choices=["plain", "size", "cover"])
parser.add_argument("--cover", type=float, default=0.5, help="the cover arm's fragment fraction")
parser.add_argument("--nms-iou", type=float, default=0.5, help="the cover arm's box_nms_iou")
parser.add_argument("--threads", type=int, default=2)
args = parser.parse_args()
torch.set_num_threads(args.threads)
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
detector, checkpoint = load_detector(args.checkpoint)
cfg = checkpoint["config"]
root = Path(checkpoint["data_root"])
todo = [(arm, seed) for seed in args.seeds for arm in args.arms if not (out / f"{arm}-seed{seed}" / "report.json").is_file()]
if todo:
    train_set = SceneDataset(root, "train", family=checkpoint["family"], num_input_views=cfg["input_views"],
                             num_target_views=cfg["target_views"], image_size=(cfg["image_size"],) * 2,
                             seed=cfg["seed"], box_source=cfg["box_source"])
    cache = engine.cache_proposals(detector, train_set, carve_from_gt=cfg["carve_from_gt_stage2"])
    print(f"cached {len(cache)} proposals of {len(train_set)} training scenes", flush=True)
    if "cover" in args.arms:
        targets, matched = engine.proposal_targets(engine._boxes_of(cache.proposals), cache.scene,
                                                   engine._boxes_of(cache.gt), cache.gt_scene, cover=args.cover)
        covered = dataclasses.replace(cache, targets=engine._rows_of(targets), matched=matched)
        print(f"matched proposals: {int(cache.matched.sum())} one-to-one, {int(matched.sum())} with fragments "
              f"(cover {args.cover})", flush=True)
for arm, seed in todo:
    kwargs = dict(checkpoint["detector_kwargs"], box_head_size_input=arm == "size",
                  box_nms_iou=args.nms_iou if arm == "cover" else 0.0)
    trained = copy.deepcopy(detector)
    trained.box_nms_iou = kwargs["box_nms_iou"]
    old = detector.box_head
    torch.manual_seed(seed)
    trained.box_head = BoxHead(old.in_channels, resolution=old.resolution, channels=old.cnn[0].out_channels,
                               context=old.context, margin=old.margin, inputs=old.inputs, size_input=arm == "size",
                               size_unit=detector.scene_model.grid.voxel_size)
    engine.train_box_head_on_cache(trained, covered if arm == "cover" else cache, steps=args.steps, batch_size=cfg["box_head_batch"],
                                   lr=cfg["lr_box_head"], seed=seed, grad_clip=cfg["grad_clip"] or None)
    trained.eval()
    name = f"{arm}-seed{seed}"
    save_checkpoint(out / f"{name}.pt", dict(checkpoint, detector_kwargs=kwargs, model=trained.state_dict()))
    report = evaluate_detector(trained, root, "test", views=[5], image_size=(cfg["image_size"],) * 2,
                               family=checkpoint["family"], box_source=cfg["box_source"])
    report.setdefault("settings", {})["checkpoint"] = str(out / f"{name}.pt")
    write_report(report, out / name)
    print(f"{name}: object_AUROC={report['object_AUROC']:.4f} box_recall={report['box_recall']:.4f}", flush=True)
for seed in args.seeds:
    for arm in args.arms:
        path = out / f"{arm}-seed{seed}" / "report.json"
        if path.is_file():
            report = json.loads(path.read_text())
            print(f"{arm}-seed{seed}: object_AUROC={report['object_AUROC']:.4f} box_recall={report['box_recall']:.4f}")
