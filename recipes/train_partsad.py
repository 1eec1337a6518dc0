"""Train the odd-one-out detector on the PartsAD family: stage 1 (scene model), then stage 2 (matcher).

``recipes/train_toysad.py`` runs this same recipe with ``family="toys"`` (one recipe, two datasets).

    python recipes/train_partsad.py                          # the embedded synthetic default (offline)
    python recipes/train_partsad.py --preset smoke --out /tmp/smoke   # < 1 minute: checks an install
    python recipes/train_partsad.py --preset full --data /data/PartsAD-15K --dinov2_path dinov2_vits14.pth
    torchrun --nproc_per_node 2 recipes/train_partsad.py     # DistributedDataParallel (gloo on CPU)

Every field of ``Config`` is a command-line option (``--field value``; booleans ``--field`` /
``--no-field``); ``--preset`` picks the starting values. Without ``--data`` the recipe generates the
embedded synthetic dataset into ``$ODDSPARSE_CACHE`` (default ``~/.cache/oddsparse``) on first use and
reuses it afterwards. The run folder ``--out`` holds ``config.json``, ``stage0.pt``, ``stage1.pt``, ``box_head.pt``, ``matcher_warmup.pt``, ``stage2.pt``,
``box_head_refresh.pt``, ``final.pt`` (what ``oddsparse eval`` / ``oddsparse predict`` take), ``teacher_pca.npz`` and ``tb/``.
Runs resume from the run folder's checkpoints (``--no-resume`` starts over).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

try:
    import oddsparse  # noqa: F401
except ModuleNotFoundError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from oddsparse.data import SceneDataset
from oddsparse.data.scene_io import BOX_SOURCES, category_of
from oddsparse.data.synth import GENERATOR_VERSION
from oddsparse.data.synth.scene import BACKGROUNDS
from oddsparse.data.synth.shapes import toy_categories
from oddsparse.geometry.grid import VoxelGrid
from oddsparse.models.detector import build_detector
from oddsparse.train import engine
from oddsparse.utils.checkpoint import atomic_write_bytes, save_checkpoint, state_fingerprint

DATASETS = {"parts": "partsad", "toys": "toysad"}  # run-folder names of the two families


@dataclass
class Config:
    # ---- data
    data: str = ""  # published dataset root (its split JSON, else PartsAD 80/20 or ToysAD seen/unseen); empty: synthetic default
    box_source: str = "metadata"  # GT boxes: metadata (as published: centred on each object's origin, in its mesh axes) or observed (fitted to what every stored view shows of the object)
    out: str = "runs/{dataset}"  # run folder (checkpoints, config.json, TensorBoard); {dataset} = partsad / toysad
    synthetic_scenes: int = 1200  # synthetic default: number of generated scenes (about 80% train)
    synthetic_objects: tuple = (3, 6)  # synthetic default: objects per scene (min, max)
    synthetic_views: int = 12  # synthetic default: stored views per scene
    synthetic_size: int = 128  # synthetic default: rendered image size in pixels
    synthetic_workers: int = 2  # processes generating the synthetic scenes
    synthetic_min_anomaly_pixels: int = 0  # synthetic default: keep only anomalies changing >= this many pixels of their views (0: not checked)
    synthetic_background: str = "gradient"  # synthetic default: behind the floor, the sky gradient or a structured horizon (environment)
    synthetic_categories: str = ""  # synthetic toys: categories to draw, comma-separated; a leading + adds to the default ten (+banana,turtle,skateboard: flat toys too); empty: the ten
    image_size: int = 128  # training image size (square), views are resized on reading (stride-4 features: 32 x 32)
    input_views: int = 5  # M, input views per scene (the paper's default)
    target_views: int = 2  # T, render-target views per scene (stage 1 and lambda_p term of stage 2)
    # ---- model
    variant: str = "full"  # matcher variant: A (MLP), B (+attention), C (+distillation), full (+sparse voxel attention)
    encoder_depth: int = 18  # ResNet depth of the 2D encoder (18 small, 50 paper)
    pretrained_backbone_path: str = ""  # optional local torchvision ResNet ImageNet weights
    encoder_norm: str = "group"  # the encoder ResNet's normalisation: group (per image, the same in training and test), batch or frozen (FrozenBatchNorm; pretrained weights need batch or frozen)
    feature_channels: int = 16  # d, channels of the 2D features lifted into voxels (paper 32)
    backbone: str = "sparse"  # 3D network: sparse (spconv) or dense (Conv3d twin)
    backbone_channels: tuple = (16, 32, 64, 128)  # widths of the 4 scales of the 3D U-Net
    feature_dim: int = 128  # d_f, channels of the distilled feature field
    grid_shape: tuple = (128, 128, 32)  # voxels per axis (x, y, z); the paper: 96 x 96 x 16 of 4 cm
    voxel_size: float = 0.02  # voxel edge in metres (2 cm: boxes of 5 cm thin parts need it; the paper 4 cm)
    foreground_refine: bool = True  # predict the foreground at full image resolution (sharp silhouettes for carving)
    carve_threshold: float = 0.5  # foreground probability above which a pixel counts as foreground when carving
    carve_tolerance: int = 0  # input views allowed to see background where a voxel survives
    carve_dilation: int = 1  # voxels added around the carved set
    carve_subdivisions: int = 1  # points per voxel axis tested when carving (2 for 4 cm voxels)
    density_threshold: float = 0.2  # voxel opacity above which a voxel belongs to an object
    density_scale: float = 50.0  # density (per metre) of a unit softplus output of the density head (~1 / voxel size)
    roi_size: int = 8  # cells per axis of an object volume (paper 8)
    token_patch: int = 1  # object-volume cells per axis of one matcher token (roi_size 16 + 2: 16^3 detail, 8^3 tokens; not in the paper)
    matcher_dim: int = 64  # width of the matcher's attention blocks
    matcher_heads: int = 4  # attention heads (paper 8)
    matcher_blocks: int = 2  # attention blocks (paper 3)
    matcher_k: int = 20  # correspondences per other object (paper 20)
    matcher_distance_input: bool = True  # the matcher head also sees each object's distance to its scene's others (not in the paper; always off for A)
    matcher_difference_input: bool = False  # the matcher head's 3D CNN also reads where each object differs from its scene's others, cell by cell (not in the paper; always off for A; measured no gain, session 27)
    matcher_difference_messages: bool = False  # the matcher's attention passes each cell what it attends to minus its own value (not in the paper; always off for A; measured no gain, session 27)
    matcher_distance_anchor: bool = False  # the matcher's logit is the sum of those distances plus a learned correction starting at zero (not in the paper; needs matcher_distance_input; measured no gain, session 27)
    token_features: str = "volume"  # what each matcher token carries: "volume" (F_v, the paper's) or "all" (F_v, the distilled features, with --view_colour the views' colour, and the opacity)
    view_colour: bool = False  # the object volumes also hold the input views' colour at each cell, each view weighted by its transmittance through the scene model's density; the distance inputs compare it too (not in the paper; not trained yet; compared cell by cell on oracle volumes it read below geometry, session 31)
    box_consensus: bool = True  # a scene's estimated boxes agree on one size and ground plane (not in the paper)
    register_objects: bool = False  # each object volume is read in its scene's reference frame before scoring (not in the paper; never for A; measured no gain)
    register_resolution: int = 4  # cells per axis of the volumes the registration compares (0: the object volume's)
    merge_floating: float = 2.0  # DBSCAN clusters more than this many voxels above the ground join the grounded one below (0: off; not in the paper; toys box recall 0.68 -> 0.82)
    box_head: bool = True  # refine the DBSCAN boxes and drop ghosts with a box head (trained after stage 1; not in the paper)
    box_head_resolution: int = 16  # cells per axis of the box head's RoI volume
    box_head_inputs: str = "all"  # what the box head reads: all (F_v, opacity, carved hull) or geometry (opacity and carved hull: no appearance features)
    box_head_size_input: bool = False  # the box head also reads each proposal's size in voxels (its RoI volume is stretched to the box; not in the paper; measured no gain, session 30)
    objectness_threshold: float = 0.5  # proposals the box head scores below this objectness are dropped
    box_delta_scale: float = 1.0  # the box head's corrections are multiplied by this before they move a proposal (1: as trained, 0: the DBSCAN boxes; settable at eval; -1: chosen by stage 2b on its held-out data, see choose_delta_scale)
    # ---- rendering and losses
    num_samples: int = 48  # S, samples per ray (paper 128)
    render_size: int = 32  # colour/mask render resolution of the target views
    feature_size: int = 32  # feature render resolution (paper 32)
    teacher: str = "sift"  # distillation teacher: sift (weight-free dense SIFT) or dinov2 (local weights)
    dinov2_path: str = ""  # local DINOv2 ViT-S/14 checkpoint (teacher dinov2)
    pca_scenes: int = 4  # training scenes the teacher PCA is fitted on
    lambda_sigma: float = 1.0  # weight of the mask term in L_im
    lambda_f: float = 1.0  # weight of the feature (distillation) term
    lambda_d: float = 0.0  # weight of a depth term (L1 in metres on object pixels; not in the paper; 0: off)
    lambda_p: float = 1.0  # weight of the reconstruction loss in stage 2
    lambda_rank: float = 0.0  # weight of a within-scene ranking term beside the matcher's BCE in stages 2a and 2 (anomalies above their own scene's normal objects; not in the paper)
    lambda_box: float = 0.0  # weight of the box head's loss in stage 2 (on each step's proposals, volumes detached: the head follows the scene model stage 2 moves; 0: frozen after 1b)
    carve_from_gt_stage1: bool = False  # stage 1 carves with GT masks (training only) instead of the stage-0 foreground
    carve_from_gt_stage2: bool = False  # stage 2 and the caches of 1b, 2a, 2b carve with the GT masks (training only); off: the predicted foreground, as at test time
    # ---- optimisation
    foreground_steps: int = 3000  # stage 0: steps training the 2D encoder and foreground head on segmentation alone (0: off)
    foreground_batch: int = 4  # scenes per stage-0 step (input_views views each)
    lr_foreground: float = 1e-3  # Adam learning rate of stage 0
    batch_size: int = 2  # scenes per step and process
    stage1_steps: int = 500  # stage-1 optimizer steps (ignored when stage1_epochs > 0)
    stage2_steps: int = 100  # stage-2 optimizer steps (ignored when stage2_epochs > 0)
    stage1_epochs: float = 0.0  # stage-1 length in epochs over the training split (0: use stage1_steps)
    stage2_epochs: float = 0.0  # stage-2 length in epochs (0: use stage2_steps)
    lr: float = 1e-3  # Adam learning rate, stage 1 (paper 2e-5 at batch 4 for 50 epochs)
    lr_stage2: float = 5e-4  # Adam learning rate, stage 2
    box_head_steps: int = 1500  # stage 1b: box-head steps on cached proposals of the frozen stage-1 model (with box_head)
    box_head_batch: int = 64  # proposals per box-head step
    box_head_scenes: int = 0  # training scenes whose proposals are cached for the box head (0: all)
    lr_box_head: float = 1e-3  # Adam learning rate of the box head
    box_head_refresh_steps: int = 500  # stage 2b: box-head steps on cached proposals of the stage-2 scene model, from the stage-1b head or a new one (see init; 0: off)
    box_head_refresh_init: str = "stage2"  # stage 2b: train on from the stage-2 head (stage2) or from a new head drawn with --seed (fresh; give it 1b's --box_head_steps)
    box_head_refresh_holdout: float = 0.2  # stage 2b: fraction of training categories (or scenes, see holdout_by) held out to choose and judge the head on (0: the last step's head, always adopted)
    box_head_refresh_holdout_by: str = "category"  # stage 2b: hold out whole categories (where the training scenes have two or more; else scenes), or whole scenes
    box_head_refresh_min_gain: float = 1.0  # stage 2b: adopt the retrained head only where it divides the stage-2 head's held-out loss by this (1: any gain)
    box_head_refresh_min_recall_gain: float = 0.02  # stage 2b: ... and where it raises the held-out box recall of the final boxes by this (-1: not asked)
    box_head_refresh_fit: str = "holdout"  # stage 2b: train on the scenes not held out, judged on the others (holdout), or on every training scene for all the steps, always adopted (all; the held-out scenes then serve only --box_delta_scale -1)
    matcher_warmup_steps: int = 300  # stage-2 warm-up: matcher-only steps on cached object volumes of the frozen stage-1 model (0: off)
    matcher_warmup_batch: int = 8  # scenes per warm-up step
    matcher_warmup_draws: int = 1  # input-view draws per training scene cached for the warm-up
    matcher_warmup_scenes: int = 0  # training scenes cached for the warm-up (0: all; ~1 GB per 1000 scenes)
    matcher_warmup_boxes: str = "gt"  # boxes of the warm-up's volumes: gt, or predicted (the detector's own, as at test time)
    lr_warmup: float = 5e-4  # Adam learning rate of the matcher warm-up
    grad_clip: float = 1.0  # gradient norm clip (0: off)
    seed: int = 0  # seed of weights, data order and view draws (and of the synthetic data unless data_seed is set)
    data_seed: int = -1  # seed of the synthetic dataset (-1: seed), so that --seed alone can vary the training on the same scenes
    # ---- run
    resume: bool = True  # continue from the run folder's checkpoints (--no-resume: start over, clearing them and the TensorBoard events)
    checkpoint_every: int = 50  # steps between checkpoints (and one at the end of each stage; 0: only there)
    log_every: int = 1  # steps between TensorBoard scalars
    device: str = "auto"  # auto, cpu or cuda
    threads: int = 0  # torch CPU threads (0: torch's default)
    prefetch_batches: int = 0  # batches a background thread reads ahead of the step (same results; not paying on CPU)
    evaluate: bool = True  # evaluate final.pt on the test split at the end (when oddsparse.eval is present)


#: Config fields that take one of a few words: the command line offers them as argparse choices, so a value
#: outside is a usage error naming the option (and ``--help`` lists them).
CHOICES = {"variant": ("A", "B", "C", "full"), "box_head_refresh_holdout_by": ("scene", "category"),
           "synthetic_background": tuple(BACKGROUNDS), "box_head_refresh_init": ("stage2", "fresh"),
           "box_head_refresh_fit": ("holdout", "all"), "box_head_inputs": ("all", "geometry"),
           "box_source": tuple(BOX_SOURCES), "matcher_warmup_boxes": ("gt", "predicted"),
           "device": ("auto", "cpu", "cuda"), "teacher": ("sift", "dinov2"), "token_features": ("volume", "all")}

PRESETS = {
    # tiny generated scenes, a few steps of both stages: checks an install end to end in < 1 minute on a CPU
    "smoke": dict(out="runs/{dataset}-smoke", synthetic_scenes=4, synthetic_objects=(3, 4), synthetic_views=6,
                  synthetic_size=64, synthetic_workers=1, image_size=64, input_views=2, target_views=1,
                  feature_channels=8, backbone_channels=(8, 16, 32, 64), matcher_dim=32, matcher_heads=2,
                  matcher_blocks=1, num_samples=16, render_size=16, feature_size=16, pca_scenes=1, batch_size=1,
                  grid_shape=(48, 48, 16), voxel_size=0.04, carve_subdivisions=2, carve_from_gt_stage1=True,
                  foreground_steps=2, foreground_batch=2, stage1_steps=3, stage2_steps=2,
                  matcher_warmup_steps=2, matcher_warmup_batch=2, box_head_steps=2, box_head_batch=4, box_head_refresh_steps=2,
                  box_head_resolution=8, checkpoint_every=2, evaluate=False),
    # the embedded synthetic default (the dataclass defaults above): 1200 generated 128 px scenes (about 15 minutes to
    # generate once on 2 cores), 3000 stage-0 segmentation steps with a group-norm encoder (about 1 s each on 2 idle
    # cores; 1500 with batch norm up to session 14), 500 stage-1 steps of batch 2, 1500 box-head steps on cached
    # proposals, a 300-step matcher warm-up on cached object volumes, 100 stage-2 steps, 500 box-head steps on the
    # stage-2 model's proposals (stage 2b, 10-15 minutes on one core): about 3 hours on 2 CPU cores
    # (measured: README, Results; every experiment in docs/RESULTS.md)
    "default": dict(),
    # the default recipe at the resolution the GT oracles ask for (docs/RESULTS.md, "What the object volumes could read"): a
    # perfect density at 1 cm voxels reads object_AUROC 0.93 on GT boxes, 0.86 at the default's 2 cm, and 128 px
    # silhouettes cap any density at about 0.77, so 1 cm voxels over the same 2.56 m x 2.56 m x 0.64 m, 256 px
    # images and scenes, renders at 128 px; for a GPU (not trained on these CPUs: its stage-0 and stage-1 steps cost
    # 4x and 6x the default's here, about 4 h for the two stages on one idle core: `python benchmarks/bench_presets.py`).
    # That 0.93 is a distance on 16^3 cells: a matcher trained on the perfect 1 cm density reads 0.89 at these 8^3
    # cells and 0.90 with --roi_size 16 --token_patch 2 (within noise of 8^3; session 26), so 8^3 is kept
    "fine": dict(out="runs/{dataset}-fine", grid_shape=(256, 256, 64), voxel_size=0.01, density_scale=100.0,
                 synthetic_size=256, image_size=256, render_size=128, num_samples=96),
    # the paper's configuration: ResNet50, d=32, 128 samples, lr 2e-5, batch 4, 50 epochs, DINOv2 teacher
    "full": dict(out="runs/{dataset}-full", grid_shape=(96, 96, 16), voxel_size=0.04, carve_subdivisions=2,
                 image_size=256, input_views=5, target_views=5, encoder_depth=50,
                 feature_channels=32, backbone_channels=(32, 64, 128, 256), matcher_dim=128, matcher_heads=8,
                 matcher_blocks=3, num_samples=128, render_size=64, feature_size=32, teacher="dinov2", pca_scenes=32,
                 batch_size=4, stage1_epochs=50.0, stage2_epochs=50.0, lr=2e-5, lr_stage2=2e-5,
                 synthetic_scenes=2000, synthetic_objects=(3, 12), synthetic_views=20, synthetic_size=256,
                 matcher_warmup_steps=2000, matcher_warmup_scenes=2000, encoder_norm="batch",
                 checkpoint_every=500, log_every=10),
}


def parse_config(argv=None) -> Config:
    """``--preset`` picks the starting values; every Config field is then an option ``--field value``."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=sorted(PRESETS), default="default")
    known, _ = pre.parse_known_args(argv)
    base = Config(**PRESETS[known.preset])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], parents=[pre],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    comments = _field_comments()
    for field in dataclasses.fields(Config):
        default = getattr(base, field.name)
        help_text = comments.get(field.name, "").replace("%", "%%")  # argparse %-formats help strings
        if isinstance(default, bool):
            parser.add_argument(f"--{field.name}", action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
        elif isinstance(default, tuple):
            parser.add_argument(f"--{field.name}", default=default, help=help_text + " (comma-separated)",
                                type=lambda text: tuple(int(v) for v in text.split(",")))
        else:
            parser.add_argument(f"--{field.name}", type=type(default), default=default, help=help_text,
                                choices=CHOICES.get(field.name))
    args = vars(parser.parse_args(argv))
    args.pop("preset")
    cfg = Config(**args)
    if cfg.variant == "A":  # A scores each object alone: nothing to compare
        cfg = dataclasses.replace(cfg, matcher_distance_input=False, matcher_distance_anchor=False,
                                  matcher_difference_input=False, matcher_difference_messages=False,
                                  register_objects=False)
    if cfg.target_views < 1:  # found otherwise only after stage 0, at stage 1's first step
        parser.error(f"--target_views must be >= 1 (stages 1 and 2 render target views), got {cfg.target_views}")
    if cfg.lambda_box > 0 and not cfg.box_head:
        parser.error(f"--lambda_box {cfg.lambda_box} trains the box head in stage 2: it needs --box_head")
    if cfg.checkpoint_every < 0:
        parser.error(f"--checkpoint_every must be >= 0 (0: only at the end of each stage), got {cfg.checkpoint_every}")
    if cfg.matcher_distance_anchor and not cfg.matcher_distance_input:
        parser.error("--matcher_distance_anchor scores the distance inputs: it needs --matcher_distance_input")
    try:
        toy_categories(cfg.synthetic_categories)
    except ValueError as error:
        parser.error(f"--synthetic_{error}")
    if not (cfg.box_delta_scale >= 0 or cfg.box_delta_scale == AUTO_DELTA_SCALE):
        parser.error(f"--box_delta_scale must be >= 0, or -1 (chosen by stage 2b), got {cfg.box_delta_scale}")
    if cfg.box_delta_scale == AUTO_DELTA_SCALE and not (cfg.box_head and cfg.box_head_refresh_steps > 0
                                                        and cfg.box_head_refresh_holdout > 0):
        parser.error("--box_delta_scale -1 is chosen by stage 2b on its held-out data: it needs --box_head, "
                     "--box_head_refresh_steps > 0 and --box_head_refresh_holdout > 0")
    if cfg.box_head_refresh_init == "fresh" and 0 < cfg.box_head_refresh_steps < cfg.box_head_steps:
        # a new head starts from nothing, unlike the stage-2 head that 2b otherwise trains on
        warn(f"warning: --box_head_refresh_init fresh trains stage 2b's new box head for {cfg.box_head_refresh_steps} "
             f"steps, fewer than stage 1b's {cfg.box_head_steps}; on parts a new head of 500 steps read 0.056 "
             f"object_AUROC below one of 1500 (session 25): pass --box_head_refresh_steps {cfg.box_head_steps}")
    if cfg.pretrained_backbone_path and cfg.encoder_norm == "group":
        parser.error(f"--pretrained_backbone_path {cfg.pretrained_backbone_path} holds BatchNorm statistics that a "
                     f"group-norm encoder cannot load: add --encoder_norm batch (or frozen)")
    return cfg


def warn(message: str) -> None:
    """Print ``message`` on stderr from the main process only (torchrun's ``RANK`` 0, or no ``RANK``): the
    recipe's checks run in every process of a distributed run, which would repeat it once per GPU."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(message, file=sys.stderr)


def _field_comments() -> dict[str, str]:
    """The ``# comment`` after each Config field, used as its --help text."""
    comments = {}
    for line in Path(__file__).read_text().splitlines():
        stripped = line.strip()
        if ":" in stripped and "#" in stripped and stripped.split(":")[0].isidentifier():
            comments[stripped.split(":")[0]] = stripped.split("#", 1)[1].strip()
    return comments


def model_kwargs(cfg: Config) -> tuple[dict, dict]:
    """The plain keyword dicts of SceneModel and OddOneOutDetector (stored in every checkpoint)."""
    grid = VoxelGrid.centered(shape=cfg.grid_shape, voxel_size=cfg.voxel_size)
    scene_kwargs = dict(grid=dict(shape=list(grid.shape), voxel_size=grid.voxel_size, origin=list(grid.origin)),
                        encoder_depth=cfg.encoder_depth, feature_channels=cfg.feature_channels, backbone=cfg.backbone,
                        backbone_channels=list(cfg.backbone_channels), feature_dim=cfg.feature_dim,
                        carve_threshold=cfg.carve_threshold, carve_tolerance=cfg.carve_tolerance,
                        carve_dilation=cfg.carve_dilation, carve_subdivisions=cfg.carve_subdivisions,
                        pretrained_backbone_path=cfg.pretrained_backbone_path or None,
                        density_scale=cfg.density_scale, foreground_refine=cfg.foreground_refine,
                        encoder_norm=cfg.encoder_norm)
    detector_kwargs = dict(variant=cfg.variant, density_threshold=cfg.density_threshold, k=cfg.matcher_k,
                           heads=cfg.matcher_heads, blocks=cfg.matcher_blocks, dim=cfg.matcher_dim,
                           box_head=cfg.box_head, box_head_resolution=cfg.box_head_resolution,
                           box_head_inputs=cfg.box_head_inputs, box_head_size_input=cfg.box_head_size_input,
                           objectness_threshold=cfg.objectness_threshold,
                           box_delta_scale=1.0 if cfg.box_delta_scale == AUTO_DELTA_SCALE else cfg.box_delta_scale,
                           matcher_distance_input=cfg.matcher_distance_input,
                           matcher_distance_anchor=cfg.matcher_distance_anchor,
                           matcher_difference_input=cfg.matcher_difference_input,
                           matcher_difference_messages=cfg.matcher_difference_messages, box_consensus=cfg.box_consensus,
                           register_objects=cfg.register_objects, register_resolution=cfg.register_resolution,
                           merge_floating=cfg.merge_floating, roi_size=cfg.roi_size,
                           token_patch=cfg.token_patch, token_features=cfg.token_features,
                           view_colour=cfg.view_colour)
    return scene_kwargs, detector_kwargs


#: Scene-model fields that change the layout of its weights: a run folder resumes only with the values it was trained with.
LAYOUT_FIELDS = ("encoder_depth", "encoder_norm", "feature_channels", "backbone", "backbone_channels", "feature_dim",
                 "foreground_refine")
#: The same for the detector's fields that this recipe sets (matcher and box head; each changes the shapes of the
#: state dict, ``variant`` from or to A).
DETECTOR_LAYOUT_FIELDS = ("variant", "dim", "blocks", "roi_size", "token_patch", "box_head", "box_head_resolution",
                          "box_head_inputs", "box_head_size_input", "matcher_distance_input",
                          "matcher_distance_anchor", "matcher_difference_input", "token_features", "view_colour")
#: Options of the detector fields whose name differs.
DETECTOR_OPTIONS = {"dim": "matcher_dim", "blocks": "matcher_blocks"}
#: A run folder's checkpoints, the latest step first.
#: ``(report folder, box kind)`` of the two evaluations a run ends with (read back by sweep_variants.py).
REPORT_FOLDERS = (("eval", "predicted"), ("eval_gt_boxes", "gt"))

RUN_CHECKPOINTS = ("final.pt", "box_head_refresh.pt", "stage2.pt", "matcher_warmup.pt", "box_head.pt", "stage1.pt", "stage0.pt")


def start_over(out: Path) -> None:
    """Clear what a run in ``out`` trained (``--no-resume``): its checkpoints, the teacher's PCA and the
    TensorBoard events (a new run's curves would otherwise be drawn over the old run's). The teacher's
    feature cache (keyed by teacher) and the reports (kept only for the weights they were made from) stay."""
    for name in (*RUN_CHECKPOINTS, "teacher_pca.npz"):
        (out / name).unlink(missing_ok=True)
    if (out / "tb").is_dir():
        shutil.rmtree(out / "tb")


def scene_kwargs_differences(stored: dict, scene_kwargs: dict, fields=None, model=None) -> dict[str, tuple]:
    """``{field: (stored value, this run's value)}`` where a checkpoint's ``scene_kwargs`` differ from ``scene_kwargs``.

    A field that a checkpoint written before it existed lacks reads as ``SceneModel``'s default (e.g.
    ``encoder_norm="batch"``); tuples and lists compare equal. ``fields``: the fields to compare (default: all).
    ``model``: the class whose keyword defaults fill missing fields (default ``SceneModel``; the recipe also
    compares ``detector_kwargs`` with ``OddOneOutDetector``).
    """
    import inspect

    from oddsparse.models.scene_model import SceneModel

    defaults = {name: p.default for name, p in inspect.signature((model or SceneModel).__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}

    def plain(value):
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    names = fields if fields is not None else sorted(set(stored) | set(scene_kwargs))
    pairs = {f: (plain(stored.get(f, defaults.get(f))), plain(scene_kwargs.get(f, defaults.get(f)))) for f in names}
    return {f: pair for f, pair in pairs.items() if pair[0] != pair[1]}


def _resume_option(field: str, value) -> str:
    """The command-line option that sets a model field to ``value`` (a stored checkpoint value)."""
    name = DETECTOR_OPTIONS.get(field, field)
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no-{name}"
    return f"--{name} {','.join(map(str, value)) if isinstance(value, list) else value}"


def check_run_folder(out: Path, scene_kwargs: dict, foreground_steps: int | None = None,
                     detector_kwargs: dict | None = None) -> None:
    """Refuse to resume ``out`` with options whose weights its checkpoints cannot hold.

    Reads the latest checkpoint of the folder and compares its ``scene_kwargs`` on :data:`LAYOUT_FIELDS`
    (a field that a checkpoint written before it existed lacks reads as ``SceneModel``'s default, e.g.
    ``encoder_norm="batch"``), then, given this run's ``detector_kwargs``, its ``detector_kwargs`` on
    :data:`DETECTOR_LAYOUT_FIELDS` (missing ones read as ``OddOneOutDetector``'s defaults); a difference stops
    the run with the file, the fields and the options that resume it, instead of a ``load_state_dict``
    failure after the data is loaded. ``foreground_steps``: this run's stage-0 length; where the folder's
    differs, the options include it (stage 0 would otherwise go on).
    """
    from oddsparse.models.detector import OddOneOutDetector
    from oddsparse.utils.checkpoint import load_checkpoint

    for name in RUN_CHECKPOINTS:
        path = out / name
        if not path.is_file():
            continue
        checkpoint = load_checkpoint(path, mmap=True)  # only its kwargs and config are read
        stored = checkpoint.get("scene_kwargs")
        if not isinstance(stored, dict):
            raise SystemExit(f"{path}: field 'scene_kwargs' missing: not a checkpoint of this recipe")
        key, differ = "scene_kwargs", scene_kwargs_differences(stored, scene_kwargs, LAYOUT_FIELDS)
        if not differ and detector_kwargs is not None and isinstance(checkpoint.get("detector_kwargs"), dict):
            key, differ = "detector_kwargs", scene_kwargs_differences(
                checkpoint["detector_kwargs"], detector_kwargs, DETECTOR_LAYOUT_FIELDS, model=OddOneOutDetector)
        if differ:
            was = ", ".join(f"{f}={old!r}" for f, (old, _) in differ.items())
            now = ", ".join(f"{f}={new!r}" for f, (_, new) in differ.items())
            options = " ".join(_resume_option(f, old) for f, (old, _) in differ.items())
            stage0 = (checkpoint.get("config") or {}).get("foreground_steps")
            if key == "scene_kwargs" and foreground_steps is not None and stage0 is not None and stage0 != foreground_steps:
                options += f" --foreground_steps {stage0}"
            why = (" (the defaults changed in session 15: encoder_norm batch -> group, foreground_steps 1500 -> 3000)"
                   if "encoder_norm" in differ else "")
            raise SystemExit(f"{path}: field '{key}' was trained with {was}, but this run asks for {now}{why}; "
                             f"resume it with `{options}`, or start over with --no-resume or another --out")
        return


def synthetic_seed(cfg: Config) -> int:
    """Seed of the embedded synthetic dataset: ``data_seed``, or ``seed`` where it is -1."""
    return cfg.seed if cfg.data_seed < 0 else cfg.data_seed


def synthetic_root(cfg: Config, family: str) -> Path:
    """Cache folder of the embedded synthetic dataset for ``cfg`` ($ODDSPARSE_CACHE or ~/.cache/oddsparse)."""
    cache = Path(os.environ.get("ODDSPARSE_CACHE", Path.home() / ".cache" / "oddsparse"))
    lo, hi = cfg.synthetic_objects
    suffix = f"-p{cfg.synthetic_min_anomaly_pixels}" if cfg.synthetic_min_anomaly_pixels > 0 else ""
    suffix += "-env" if cfg.synthetic_background == "environment" else ""  # the defaults add nothing: older caches
    categories = toy_categories(cfg.synthetic_categories)
    if categories is not None:  # the count and a digest of the ordered names (the order draws the scenes)
        suffix += f"-c{len(categories)}-{hashlib.sha1(','.join(categories).encode()).hexdigest()[:8]}"
    return cache / "synthetic" / (f"{family}-{cfg.synthetic_size}px-{cfg.synthetic_scenes}-seed{synthetic_seed(cfg)}"
                                  f"-o{lo}-{hi}-v{cfg.synthetic_views}{suffix}-g{GENERATOR_VERSION}")


def _cached_step_done(path: Path, later: tuple, steps: int, detector, dist) -> bool:
    """Whether a step trained on a cache (box head, matcher warm-up) needs no run: a later checkpoint of the
    run folder exists (it holds these weights, and the later step resumes from it), or ``path`` holds the
    finished step (its weights are loaded)."""
    if any((path.parent / name).is_file() for name in later):
        return True
    if path.is_file():
        from oddsparse.utils.checkpoint import load_checkpoint

        checkpoint = load_checkpoint(path, map_location=dist.device)
        if checkpoint.get("step") == steps:
            detector.load_state_dict(checkpoint["model"])
            return True
    return False


def _save_cached_step(path: Path, payload: dict, detector, stage: str, steps: int, losses: list, dist) -> None:
    """The detector checkpoint of a finished cached step (rank 0 writes, every process waits)."""
    if dist.is_main:
        save_checkpoint(path, dict(payload, model=detector.state_dict(), stage=stage, step=steps,
                                   losses=torch.tensor(losses)))
    engine._barrier(dist)


def adopts_refreshed_head(start_loss: float, best_step: int, best_loss: float, min_gain: float,
                          recall_start: float | None = None, recall_best: float | None = None,
                          min_recall_gain: float = -1.0) -> bool:
    """Stage 2b's rule: the retrained head (of lowest held-out loss ``best_loss``, reached at ``best_step`` > 0)
    replaces the stage-2 head where it divides the stage-2 head's ``start_loss`` by ``min_gain`` or more and
    raises the held-out box recall of the final boxes from ``recall_start`` (the stage-2 head's) to
    ``recall_best`` by ``min_recall_gain`` or more (either ``None``: not measured, e.g. records of older runs,
    judged on the loss alone)."""
    loss_ok = best_step > 0 and start_loss >= min_gain * best_loss
    if recall_start is None or recall_best is None:
        return loss_ok
    return loss_ok and recall_best - recall_start >= min_recall_gain


#: ``--box_delta_scale`` value asking stage 2b to choose the scale (:func:`choose_delta_scale`).
AUTO_DELTA_SCALE = -1.0
#: The scales :func:`choose_delta_scale` tries.
DELTA_SCALES = (0.0, 0.25, 0.5, 0.75, 1.0)


def choose_delta_scale(cfg: Config, detector, cache, validation, dist) -> tuple[float, dict]:
    """The box-delta scale of ``--box_delta_scale -1``: a probe head, new (torch seed ``seed``) and trained as
    stage 1b trains (``box_head_steps``) on ``cache`` (stage 2b's proposals without its held-out categories or
    scenes), then the held-out final-box recall (:func:`oddsparse.train.engine.box_recall_on_cache`) of each
    of :data:`DELTA_SCALES`; the highest wins, ties going to the larger scale (nearer the head as trained).
    Returns ``(scale, {scale: recall})``; the probe is dropped (the detector's own head is untouched).

    A head learns its size corrections on its training categories and applies them to shapes it has not
    seen (session 9: a duck's footprint shrunk like a car's); the probe never saw the held-out ones, so they
    measure how much of its correction carries over. Session 22 (toys, structured horizons; held-out
    categories car + mushroom, chair + snowman): recall 0.975 / 0.723 at scale 1, 0.993 / 0.758-0.769 at
    0.25-0.75; on the test split's unseen categories the run's own head went 0.685 -> 0.901-0.924 at 0.5-0.75.
    """
    import copy

    probe = copy.deepcopy(detector)
    torch.manual_seed(cfg.seed)
    probe.box_head.reset_parameters()
    engine.train_box_head_on_cache(probe, cache, steps=cfg.box_head_steps, batch_size=cfg.box_head_batch,
                                   lr=cfg.lr_box_head, seed=cfg.seed, grad_clip=cfg.grad_clip or None,
                                   progress=dist.is_main)
    recalls = {}
    for scale in DELTA_SCALES:
        probe.box_delta_scale = scale
        recalls[scale] = engine.box_recall_on_cache(probe, validation)["recall"]
    return best_delta_scale(recalls), recalls


def best_delta_scale(recalls: dict) -> float:
    """The scale of highest held-out recall in ``{scale: recall}``, ties going to the larger scale."""
    return max(recalls, key=lambda scale: (recalls[scale], scale))


def _warn_refresh_options(path: Path, stored: dict, cfg: Config) -> None:
    """Warn where a finished stage 2b (``path``, its ``config`` ``stored``) was trained with other
    ``box_head_refresh_*`` options than this run asks for: a resumed run keeps it (e.g.
    ``--box_head_refresh_init fresh`` on a finished folder changes nothing unless the file is removed)."""
    if "box_head_refresh_init" not in stored:  # a file of before the field: 2b trained on from the stage-2 head
        stored = dict(stored, box_head_refresh_init="stage2")
    differ = {f: (stored[f], v) for f, v in asdict(cfg).items()
              if f.startswith("box_head_refresh_") and f in stored and stored[f] != v}
    if differ:
        was = ", ".join(f"--{f} {old}" for f, (old, _) in differ.items())
        now = ", ".join(f"--{f} {new}" for f, (_, new) in differ.items())
        warn(f"warning: {path} was trained with {was}; this run asks for {now} but keeps it (remove the file to "
             f"train stage 2b again; final.pt is then rewritten)")


def holdout_groups(cfg: Config, train_set) -> list[str] | None:
    """Stage 2b's hold-out units: the category of each training scene (the scene name before its first ``_``,
    as the datasets define it) where ``box_head_refresh_holdout_by`` is ``category`` and there are two or more
    categories; ``None`` (whole scenes) otherwise."""
    if cfg.box_head_refresh_holdout_by == "scene":
        return None
    categories = [category_of(Path(folder).name) for folder in train_set.scenes]
    return categories if len(set(categories)) > 1 else None


def train_box_head(cfg: Config, detector, train_set, out: Path, payload: dict, dist, *, refresh: bool = False) -> None:
    """Stage 1b: train the box head alone on DBSCAN proposals of the frozen stage-1 model, cached once.

    One scene-model forward per training scene gives its proposals (carved as at test time), matched to
    the GT boxes; the head then learns box corrections and objectness for ``box_head_steps``. Writes
    ``box_head.pt`` (a detector checkpoint); skipped when it, or a later checkpoint, already exists.

    ``refresh``: stage 2b instead (``box_head_refresh.pt``). Stage 2 moves the scene model under a frozen
    head; on toys variant B (session 16) the head then kept 0.45 boxes per object instead of 0.99 although
    the proposals were as good as before. Stage 2b caches the proposals of the stage-2 model, holds out
    ``box_head_refresh_holdout`` of the training categories or scenes (below), trains the stage-1b head on the others for
    ``box_head_refresh_steps`` and takes the weights with the lowest loss on the held-out ones, measured
    every 50 steps and before the first. It adopts them only where they divide the stage-2 head's
    held-out loss by ``box_head_refresh_min_gain`` or more (1 by default: any gain) and raise the held-out
    box recall of the final boxes (:func:`oddsparse.train.engine.box_recall_on_cache`: box head,
    objectness threshold, scene consensus, IoU 0.5 as ``oddsparse eval`` counts) by
    ``box_head_refresh_min_recall_gain`` (0.02) or more; otherwise the stage-2 head stays, bit for bit. A
    lower proposal loss alone did not mean better final boxes (session 17, toys C: held-out loss 1.28x
    lower, test box recall 0.865 -> 0.778); over 12 retrained heads of sessions 17 and 18 every one whose
    test AUROC fell measurably had a held-out recall gain of -0.001, the three that rose measurably 0.04 or
    more (toys B's head that stage 2 broke, under both hold-outs, and parts full of a second training
    seed), the others -0.011 to +0.014 (session 17's rule, a loss gain of 2, missed the seed: 1.90x). The checkpoint's
    ``validation`` holds the held-out losses (``steps``, ``losses``, ``best_step``, ``adopted``), the
    held-out box recall with the stage-2 head and with the best one (``recall_start``, ``recall_best``) and
    what was held out (``held_out_scenes``, ``held_out_categories``). The held-out units are whole categories
    where the training scenes have two or more (``box_head_refresh_holdout_by category``, the default; the
    toys family, whose test split holds unseen categories), else whole scenes: a retrained head keeps its
    training categories' recall but loses unseen ones' (session 18, toys: unseen recall 0.836 -> 0.710 for a
    head adopted at a held-out gain of 1.01x), and a category hold-out measures that where a scene hold-out
    cannot (toys B: the adopted head's unseen recall 0.727 with scenes held out, 0.774 with categories).
    ``box_head_refresh_init fresh``: stage 2b trains a new head (:meth:`BoxHead.reset_parameters` under torch
    seed ``seed``) instead of training the stage-2 head on; its gain is still measured against the stage-2
    head's held-out loss (``validation["stage2_loss"]``; ``losses`` then starts with the new head's).
    ``box_delta_scale -1``: afterwards :func:`choose_delta_scale` sets the detector's box-delta scale from a
    probe head and the same held-out data (``validation["delta_scale_recalls"]``; the checkpoint's
    ``detector_kwargs`` carry the scale, and a resumed run reads it back).
    ``box_head_refresh_fit all``: the head trains on every training scene's proposals (the held-out ones
    included) for all ``box_head_refresh_steps`` and is adopted, as nothing it did not train on is left to
    judge it by (``validation``: ``fit`` "all", ``best_step`` the last step, no losses or recalls); the held-out
    split, drawn as above, serves only the probe of ``box_delta_scale -1``. Session 24 (flat toys): with the
    default fit the fresh head's loss on the held-out categories was lowest at step 250 and the head kept from
    there read 0.442 on the test split, a head trained on every scene for 1500 steps 0.458-0.503 (three seeds).
    """
    name, stage, steps = ("box_head_refresh.pt", "2b", cfg.box_head_refresh_steps) if refresh else \
        ("box_head.pt", "1b", cfg.box_head_steps)
    path = out / name
    later = () if refresh else ("matcher_warmup.pt", "stage2.pt")
    finished = None  # a stage 2b checkpoint already in the folder (its options, scale and record; weights mapped)
    if refresh and path.is_file():
        from oddsparse.utils.checkpoint import load_checkpoint

        finished = load_checkpoint(path, mmap=True)
        _warn_refresh_options(path, finished.get("config") or {}, cfg)  # warns from rank 0 only
    if _cached_step_done(path, later, steps, detector, dist):
        if finished is not None and cfg.box_delta_scale == AUTO_DELTA_SCALE:  # the scale it chose
            detector.box_delta_scale = float((finished.get("detector_kwargs") or {}).get("box_delta_scale", 1.0))
            if (finished.get("validation") or {}).get("delta_scale_recalls") is None:
                warn(f"warning: {path} was trained without --box_delta_scale -1; this run keeps its scale "
                     f"{detector.box_delta_scale:g} (remove the file to train stage 2b again and choose one)")
        return
    cache = engine.cache_proposals(detector, train_set, device=dist.device, carve_from_gt=cfg.carve_from_gt_stage2,
                                   max_scenes=cfg.box_head_scenes, progress=dist.is_main)
    model = "stage-2" if refresh else "stage-1"
    history: list = []
    validation, groups = None, None
    fit_all = refresh and cfg.box_head_refresh_fit == "all"
    if len(cache) == 0:  # a stage 1 too short to propose anything (e.g. the smoke preset): the head stays untrained
        kept = ("the stage-2 head is kept" if refresh else
                "a fresh head leaves the proposals unchanged and keeps them all")
        warn(f"warning: the {model} model proposed no box on {len(train_set)} training scenes; box head not trained "
             f"({kept})")
        losses = []
    else:
        groups = holdout_groups(cfg, train_set) if refresh else None
        every_scene = cache
        if refresh and cfg.box_head_refresh_holdout > 0 and len(torch.unique(cache.scene)) > 1:
            cache, validation = cache.split_scenes(cfg.box_head_refresh_holdout, seed=cfg.seed, groups=groups)
        judged = None if fit_all else validation  # the held-out proposals the adoption gate reads
        if judged is not None:  # the gate reads the stage-2 head's recall again
            start_head = {k: v.detach().clone() for k, v in detector.box_head.state_dict().items()}
        if refresh and cfg.box_head_refresh_init == "fresh":
            # the stage-2 head's held-out loss is what the new head is judged against (the history starts
            # with the new head's)
            start_loss = engine.box_head_cache_loss(detector, judged) if judged is not None else None
            torch.manual_seed(cfg.seed)  # the same new head on every process
            detector.box_head.reset_parameters()
        losses = engine.train_box_head_on_cache(detector, every_scene if fit_all else cache, steps=steps,
                                                batch_size=cfg.box_head_batch, lr=cfg.lr_box_head, seed=cfg.seed,
                                                grad_clip=cfg.grad_clip or None, progress=dist.is_main,
                                                validation=judged, history=history)
    record = None  # stage 2b's choice, for the checkpoint's ``validation``
    held_scenes = torch.unique(validation.scene).tolist() if validation is not None else []
    held_categories = sorted({groups[i] for i in held_scenes}) if groups is not None and held_scenes else None
    held_names = ", ".join(held_categories) if held_categories else f"{len(held_scenes)} scenes"
    if history:
        _, best_step, best_loss = history[-1]
        start = history[0][1] if cfg.box_head_refresh_init == "stage2" else start_loss
        best_head = {k: v.detach().clone() for k, v in detector.box_head.state_dict().items()}
        recall_best = engine.box_recall_on_cache(detector, validation)["recall"]
        detector.box_head.load_state_dict(start_head)
        recall_start = engine.box_recall_on_cache(detector, validation)["recall"]
        adopted = adopts_refreshed_head(start, best_step, best_loss, cfg.box_head_refresh_min_gain,
                                        recall_start, recall_best, cfg.box_head_refresh_min_recall_gain)
        if adopted:
            detector.box_head.load_state_dict(best_head)
        record = dict(steps=[int(row[0]) for row in history[:-1]], losses=[float(row[1]) for row in history[:-1]],
                      best_step=int(best_step), adopted=bool(adopted), stage2_loss=float(start),
                      recall_start=recall_start, recall_best=recall_best)
        if dist.is_main:
            verdict = (f"the head of step {best_step} adopted" if adopted else
                       f"the stage-2 head kept (min gain {cfg.box_head_refresh_min_gain:g}, min recall gain "
                       f"{cfg.box_head_refresh_min_recall_gain:g})")
            print(f"box head refresh on the stage-2 scene model: held-out loss {start:.4f} (stage-2 head) -> "
                  f"{best_loss:.4f} at step {best_step} (gain {start / max(best_loss, 1e-12):.2f}x), {verdict}; "
                  f"last {history[-2][1]:.4f} at step {history[-2][0]}", file=sys.stderr)
            shown = ["n/a" if r is None else f"{r:.4f}" for r in (recall_start, recall_best)]
            print(f"held-out box recall (final boxes, IoU 0.5): stage-2 head {shown[0]}, head of step "
                  f"{best_step} {shown[1]}; held out: {held_names}", file=sys.stderr)
    elif fit_all and losses:
        record = dict(steps=[], losses=[], best_step=steps, adopted=True, stage2_loss=None, recall_start=None,
                      recall_best=None)
        if dist.is_main:
            held = f" (held out for the box delta scale only: {held_names})" \
                if validation is not None else ""
            print(f"box head refresh on the stage-2 scene model: the head trained on every training scene for {steps} "
                  f"steps is adopted{held}", file=sys.stderr)
    if record is not None:
        scale_recalls = None
        if cfg.box_delta_scale == AUTO_DELTA_SCALE and validation is not None:
            scale, recalls = choose_delta_scale(cfg, detector, cache, validation, dist)
            detector.box_delta_scale = scale
            scale_recalls = {f"{k:g}": v for k, v in recalls.items()}
            payload = dict(payload, detector_kwargs=dict(payload["detector_kwargs"], box_delta_scale=scale))
            if dist.is_main:
                print(f"box delta scale (probe head, held-out final-box recall): "
                      f"{', '.join(f'{k} {v:.4f}' for k, v in scale_recalls.items())} -> {scale:g}", file=sys.stderr)
        payload = dict(payload, validation=dict(record, init=cfg.box_head_refresh_init, fit=cfg.box_head_refresh_fit,
                                                held_out_scenes=held_scenes, held_out_categories=held_categories,
                                                delta_scale_recalls=scale_recalls))
    if refresh and cfg.box_delta_scale == AUTO_DELTA_SCALE and validation is None:
        warn("warning: stage 2b held nothing out (one training scene, or no proposal): the box delta scale "
             "stays 1")
    _save_cached_step(path, payload, detector, stage, steps, losses, dist)


def matcher_warmup(cfg: Config, detector, train_set, out: Path, payload: dict, dist) -> None:
    """Stage 2a: train the matcher alone on object volumes of the frozen stage-1 model, cached once.

    One scene-model forward per training scene (and view draw) gives the object volumes of its GT
    boxes (or, with ``matcher_warmup_boxes=predicted``, of its own boxes matched to them), carved as at
    test time; the matcher then trains on them for ``matcher_warmup_steps`` at
    almost no cost per step, so that end-to-end stage 2 starts from a matcher that already compares
    objects instead of from random logits. Writes ``matcher_warmup.pt`` (a detector checkpoint that
    ``oddsparse eval`` accepts); skipped when it, or a stage-2 checkpoint, already exists. Every
    process of a DDP run computes the same warm-up (same data, same seed).
    """
    path = out / "matcher_warmup.pt"
    if _cached_step_done(path, ("stage2.pt",), cfg.matcher_warmup_steps, detector, dist):
        return
    cache = engine.cache_object_volumes(detector, train_set, draws=cfg.matcher_warmup_draws, device=dist.device,
                                        carve_from_gt=cfg.carve_from_gt_stage2, max_scenes=cfg.matcher_warmup_scenes,
                                        boxes=cfg.matcher_warmup_boxes, progress=dist.is_main)
    losses = engine.train_matcher_on_cache(detector, cache, steps=cfg.matcher_warmup_steps,
                                           batch_size=cfg.matcher_warmup_batch, lr=cfg.lr_warmup, seed=cfg.seed,
                                           grad_clip=cfg.grad_clip or None, progress=dist.is_main,
                                           rank_weight=cfg.lambda_rank)
    _save_cached_step(path, payload, detector, "2a", cfg.matcher_warmup_steps, losses, dist)


def _kept_report(path: Path, fingerprint: str) -> dict | None:
    """The eval report at ``path`` when it was computed with ``fingerprint`` (:func:`state_fingerprint` of the
    weights and the evaluation's inputs), else None (no report, an unreadable one, or other weights). The code is
    not in the fingerprint: after changing the evaluation, delete the report to have it evaluated again."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    settings = report.get("settings") if isinstance(report, dict) else None
    return report if isinstance(settings, dict) and settings.get("fingerprint") == fingerprint else None


def check_local_files(cfg: Config) -> None:
    """Refuse, before any data is generated or read, options that name local weight files the run would
    only open later (after generating the synthetic data: half an hour for the full preset): the DINOv2
    teacher of a distilling variant without ``--dinov2_path``, or a named weight file that does not exist."""
    if cfg.teacher not in ("sift", "dinov2"):  # parse_config refuses it too; a Config built in code reaches here
        raise SystemExit(f"--teacher must be sift or dinov2, got {cfg.teacher!r}")
    if cfg.teacher == "dinov2" and cfg.variant in ("C", "full") and not cfg.dinov2_path:
        raise SystemExit(f"--teacher dinov2 (variant {cfg.variant} distils it) needs --dinov2_path: a local DINOv2 "
                         f"ViT-S/14 checkpoint (no model hub is reached); or --teacher sift")
    for option in ("dinov2_path", "pretrained_backbone_path"):
        path = getattr(cfg, option)
        if path and not Path(path).is_file():
            raise SystemExit(f"--{option} {path}: file not found")


def main(argv=None, *, family: str = "parts") -> dict:
    cfg = parse_config(argv)
    check_local_files(cfg)
    started = time.perf_counter()
    dist = engine.init_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out.format(dataset=DATASETS[family])).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.resume and dist.is_main:
        start_over(out)
    engine._barrier(dist)
    scene_kwargs, detector_kwargs = model_kwargs(cfg)  # plain dicts, stored in every checkpoint
    if cfg.resume:
        check_run_folder(out, scene_kwargs, cfg.foreground_steps, detector_kwargs)

    # ---- data: a published root, or the embedded synthetic default generated into the cache once
    if cfg.data:
        root = Path(cfg.data).resolve()
    else:
        if cfg.synthetic_categories and family != "toys":
            raise SystemExit(f"--synthetic_categories chooses toy categories; the {family} family has none to choose")
        root = synthetic_root(cfg, family)
        lo, hi = cfg.synthetic_objects
        engine.ensure_synthetic_dataset(root, family=family, scenes=cfg.synthetic_scenes, seed=synthetic_seed(cfg),
                                        objects=(lo, hi), views=cfg.synthetic_views, size=cfg.synthetic_size,
                                        workers=cfg.synthetic_workers, dist=dist,
                                        min_anomaly_pixels=cfg.synthetic_min_anomaly_pixels,
                                        background=cfg.synthetic_background,
                                        categories=toy_categories(cfg.synthetic_categories))
    image_size = (cfg.image_size, cfg.image_size)
    train_set = SceneDataset(root, "train", family=family, num_input_views=cfg.input_views,
                             num_target_views=cfg.target_views, image_size=image_size, seed=cfg.seed,
                             box_source=cfg.box_source)
    if len(train_set) == 0:
        raise SystemExit(f"{root}: the train split is empty")
    global_batch = cfg.batch_size * dist.world_size
    steps1 = math.ceil(cfg.stage1_epochs * len(train_set) / global_batch) if cfg.stage1_epochs > 0 else cfg.stage1_steps
    steps2 = math.ceil(cfg.stage2_epochs * len(train_set) / global_batch) if cfg.stage2_epochs > 0 else cfg.stage2_steps

    # ---- model: SceneModel inside the OddOneOutDetector, built from the plain kwargs stored in checkpoints
    detector = build_detector(scene_kwargs, detector_kwargs).to(dist.device)
    use_distillation = cfg.variant in ("C", "full")

    # ---- teacher: per-scene cached features of the target views, PCA fitted on training scenes
    teacher, teacher_info = None, {"kind": "none"}
    if use_distillation:
        every_split = SceneDataset(root, "all", family=family, num_input_views=1, num_target_views=0)
        teacher, teacher_info = engine.build_teacher_targets(
            kind=cfg.teacher, run_dir=out, cache_dir=out / "teacher_cache", train_folders=train_set.scenes,
            scene_folders={folder.name: folder for folder in every_split.scenes}, image_size=image_size,
            feature_size=(cfg.feature_size, cfg.feature_size), feature_dim=cfg.feature_dim,
            pca_scenes=cfg.pca_scenes, dinov2_path=cfg.dinov2_path or None, device=dist.device, dist=dist,
            seed=cfg.seed)

    payload = dict(config=asdict(cfg), scene_kwargs=scene_kwargs, detector_kwargs=detector_kwargs,
                   data_root=str(root), family=family, image_size=list(image_size), teacher=teacher_info)
    if dist.is_main:
        atomic_write_bytes(out / "config.json", (json.dumps(asdict(cfg), indent=2) + "\n").encode())
    loss_kwargs = dict(render_size=(cfg.render_size, cfg.render_size), feature_size=(cfg.feature_size,) * 2,
                       num_samples=cfg.num_samples, use_distillation=use_distillation,
                       lambda_sigma=cfg.lambda_sigma, lambda_f=cfg.lambda_f, lambda_d=cfg.lambda_d)
    loop_kwargs = dict(dataset=train_set, batch_size=cfg.batch_size, seed=cfg.seed, run_dir=out,
                       checkpoint_payload=payload, teacher=teacher, checkpoint_every=cfg.checkpoint_every,
                       log_every=cfg.log_every, resume=True, dist=dist, grad_clip=cfg.grad_clip or None,
                       prefetch=cfg.prefetch_batches)

    # ---- stage 0: the 2D encoder and foreground head on segmentation alone (carving quality at test time)
    if cfg.foreground_steps > 0:
        segmentation_set = SceneDataset(root, "train", family=family, num_input_views=cfg.input_views,
                                        num_target_views=0, image_size=image_size, seed=cfg.seed)
        optimizer0 = torch.optim.Adam(detector.scene_model.parameters(), lr=cfg.lr_foreground)
        engine.train_stage(stage=0, objective=engine.ForegroundObjective(detector.scene_model), model=detector,
                           optimizer=optimizer0, steps=cfg.foreground_steps,
                           **dict(loop_kwargs, dataset=segmentation_set, batch_size=cfg.foreground_batch, teacher=None))

    # ---- stage 1: scene model with L_r (+ foreground BCE); the matcher is untouched
    stage1 = engine.Stage1Objective(detector.scene_model, carve_from_gt=cfg.carve_from_gt_stage1, **loss_kwargs)
    optimizer1 = torch.optim.Adam(detector.scene_model.parameters(), lr=cfg.lr)
    result1 = engine.train_stage(stage=1, objective=stage1, model=detector, optimizer=optimizer1, steps=steps1,
                                 **loop_kwargs)

    # ---- stage 1b: box head on cached proposals of the frozen stage-1 scene model
    if cfg.box_head and cfg.box_head_steps > 0:
        train_box_head(cfg, detector, train_set, out, payload, dist)

    # ---- stage 2a: matcher warm-up on cached object volumes of the frozen stage-1 scene model (GT boxes)
    if cfg.matcher_warmup_steps > 0:
        matcher_warmup(cfg, detector, train_set, out, payload, dist)

    # ---- stage 2: end to end, BCE on matched boxes + lambda_p * L_r, starting from the stage-1 weights
    stage2 = engine.Stage2Objective(detector, lambda_p=cfg.lambda_p, carve_from_gt=cfg.carve_from_gt_stage2,
                                    lambda_box=cfg.lambda_box, lambda_rank=cfg.lambda_rank, **loss_kwargs)
    optimizer2 = torch.optim.Adam(detector.parameters(), lr=cfg.lr_stage2)
    result2 = engine.train_stage(stage=2, objective=stage2, model=detector, optimizer=optimizer2, steps=steps2,
                                 **loop_kwargs)

    # ---- stage 2b: the box head again, on cached proposals of the stage-2 scene model (its input moved in stage 2)
    if cfg.box_head and cfg.box_head_refresh_steps > 0:
        train_box_head(cfg, detector, train_set, out, payload, dist, refresh=True)
    # the box delta scale the detector ends with (stage 2b's choice where --box_delta_scale -1)
    payload = dict(payload, detector_kwargs=dict(payload["detector_kwargs"], box_delta_scale=detector.box_delta_scale))
    if dist.is_main:
        save_checkpoint(out / "final.pt", dict(payload, model=detector.state_dict(), stage=2, step=steps2))

    # ---- evaluation on the test split: the benchmark (estimated boxes) and the matcher alone (GT boxes)
    summary = ""
    if cfg.evaluate and dist.is_main:
        from oddsparse.eval.evaluate import PARTIAL_DIR, evaluate_detector, write_report

        state = detector.state_dict()
        for folder, boxes in REPORT_FOLDERS:
            # the weights and every input of the evaluation: a rerun of a finished run keeps its report
            fingerprint = state_fingerprint(state, dict(detector_kwargs=payload["detector_kwargs"], root=str(root),
                                                        split="test", views=cfg.input_views, boxes=boxes,
                                                        image_size=list(image_size), box_source=cfg.box_source))
            report = _kept_report(out / folder / "report.json", fingerprint)
            if report is None:
                report = evaluate_detector(detector.eval(), root, "test", views=(cfg.input_views,),
                                           image_size=image_size, boxes=boxes, box_source=cfg.box_source,
                                           resume_dir=out / folder / PARTIAL_DIR)
                report["settings"]["fingerprint"] = fingerprint
                write_report(report, out / folder)  # removes the kept detections
            else:
                print(f"kept {out / folder / 'report.json'}: evaluated with these weights and settings", flush=True)
            summary += f" [{boxes} boxes] " + " ".join(
                f"{k}={report[k]:.4f}" for k in ("object_AUROC", "object_accuracy", "box_recall")
                if isinstance(report.get(k), float))
    engine.close_distributed()
    if dist.is_main:
        print(f"done family={family} variant={cfg.variant} stage1_steps={steps1} stage2_steps={steps2} "
              f"stage1_loss={result1['last_loss']:.4f} stage2_loss={result2['last_loss']:.4f} "
              f"s_per_step1={result1['seconds_per_step']:.2f} s_per_step2={result2['seconds_per_step']:.2f} "
              f"minutes={(time.perf_counter() - started) / 60:.1f} final={out / 'final.pt'}{summary}")
    return {"out": out, "stage1": result1, "stage2": result2}


if __name__ == "__main__":
    from oddsparse.cli import report_bad_input

    sys.exit(report_bad_input("train_partsad.py", main))
