"""Does a trained matcher read more than the distance from the same oracle object volumes?

    python recipes/report_oracle_matcher.py --family parts --out runs/oracle-matcher-parts --workers 2

``report_resolution.py`` bounds what the object volumes could tell with a parameter-free scorer (the
median distance to the scene's other objects). This asks whether the learned part of the method, the
matcher, reads more than that scorer from the *same* volumes, so that a perfect scene model at a given
voxel size would reach further than the oracle table says. No scene model is trained or run: the
training and test scenes of the synthetic default are rebuilt from their seed and every object is
voxelised as in ``report_resolution.py`` (:func:`report_resolution.oracle_volumes`: ``--sources`` solid
and/or the visual hull at ``--image-sizes``, on a ``--fine`` lattice averaged to each of ``--voxel-sizes``,
RoI-sampled at the GT box at the matcher's ``--roi-size``).

Each oracle occupancy becomes the volume layout the matcher reads (:func:`oracle_features`: F_v and beta
are 8 flip-invariant local-shape channels of the occupancy, the opacity is the occupancy), and an
:class:`~oddsparse.models.detector.OddOneOutDetector` of the recipe's matcher settings (the scene model is
only a channel-count carrier and is never run) trains its matcher alone on the training scenes'
volumes (:func:`~oddsparse.train.engine.train_matcher_on_cache`, BCE, half-turn augmentation: the
recipe's matcher warm-up, ``--steps`` long) for each of ``--variants`` (A: no comparison; B: attention
over the scene's cells; full: sparse voxel attention on beta correspondences; C is B trained with
distillation, which needs a scene model). B and full also see the distance to the other objects
(``matcher_distance_input``, as in the recipe), so they start from what the distance scorer reads;
``--no-distance-input`` trains them without (the paper's matcher: all comparison learned by the attention).
Object_AUROC on GT boxes of the held-out test scenes, per anomaly type, against the distance scorer on
the same volumes and ``distance_fit``, a logistic regression of the labels on the three distance inputs
the matchers see (:func:`fitted_distance`: the least a matcher given them should read).

Per-scene volumes are kept in ``OUT/volumes/`` (``.npz``, no pickles) and trained matchers in
``OUT/matchers/`` (weights only, named by setting, variant and training: :func:`matcher_path`), both
written atomically: a rerun reuses the volumes and matchers of every setting it shares with an earlier
run (a run of fewer sources or voxel sizes trains nothing anew; one of other ``--steps`` trains beside).
Writes ``oracle_matcher.json`` and ``oracle_matcher.png`` (object_AUROC per setting and scorer, and per
anomaly type).
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

try:
    import oddsparse  # noqa: F401
except ModuleNotFoundError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
import torch.nn.functional as F

import report_resolution as rr  # noqa: E402  (the oracle volumes)
from oddsparse.eval.baselines import distance_to_others
from oddsparse.eval.metrics import SceneAnnotation, ScenePrediction, binary_auroc, evaluate_objects
from oddsparse.geometry.boxes import YawBoxes
from oddsparse.utils.checkpoint import atomic_write_bytes
from oddsparse.utils.figures import save_figure

FEATURES = ("occupancy", "mean3", "mean5", "mean7", "max3", "min3", "gradient", "laplacian")
VARIANTS = ("A", "B", "full")
SCORERS = ("distance", "distance_fit") + VARIANTS
#: Matcher switches of a training (``training`` key, its value when off, file-name suffix when on, keyword of
#: :func:`build_detector`); a switch that is off is absent from ``training``, so earlier matchers keep their stamps.
MATCHER_SWITCHES = (("anchor", False, "_anchor", "anchor"), ("difference", False, "_difference", "difference"),
                    ("distance_input", True, "_nodistance", "distance"),
                    ("difference_messages", False, "_diffmessages", "messages"))
#: The command-line flag (argparse dest) that turns each switch to its other value.
SWITCH_OPTIONS = {"anchor": "anchor", "difference": "difference_input", "distance_input": "no_distance_input",
                  "difference_messages": "difference_messages"}


def oracle_features(occupancy: torch.Tensor) -> torch.Tensor:
    """(O, 1, r, r, r) occupancy -> (O, 2 * 8 + 1, r, r, r) matcher volumes: F_v, beta, opacity.

    F_v holds :data:`FEATURES`: the occupancy, its box means over 3, 5 and 7 cells, its max and min over
    3 cells, the magnitude of its central-difference gradient and its 6-neighbour Laplacian (outside the
    volume counts as empty). Every channel is unchanged in meaning when the volume is turned by a
    half-turn about z (``flip(2, 3)``, the matcher's augmentation), as learned features would be. beta
    is F_v scaled to unit length per cell (a correspondence is a cell of like local shape, compared by
    cosine like distilled DINO features); the opacity is the occupancy itself.
    """
    if occupancy.dim() != 5 or occupancy.shape[1] != 1:
        raise ValueError(f"oracle_features: occupancy must be (O, 1, r, r, r), got {tuple(occupancy.shape)}")
    x = occupancy.float()
    means = [F.avg_pool3d(F.pad(x, (w,) * 6), 2 * w + 1, stride=1, count_include_pad=True) for w in (1, 2, 3)]
    padded = F.pad(x, (1,) * 6)  # one empty cell around the volume
    high = F.max_pool3d(padded, 3, stride=1)
    low = -F.max_pool3d(-padded, 3, stride=1)
    r = x.shape[2:]

    def shifted(axis: int, offset: int) -> torch.Tensor:  # padded moved by offset in {-1, 0, 1} along axis
        index = [slice(None), slice(None)] + [slice(1, 1 + n) for n in r]
        index[axis] = slice(1 + offset, 1 + offset + r[axis - 2])
        return padded[tuple(index)]

    gradient = torch.sqrt(sum(((shifted(a, 1) - shifted(a, -1)) / 2) ** 2 for a in (2, 3, 4)))
    laplacian = sum(shifted(a, 1) + shifted(a, -1) for a in (2, 3, 4)) - 6 * x
    feats = torch.cat([x, *means, high, low, gradient, laplacian], dim=1)  # (O, 8, r, r, r)
    beta = feats / feats.norm(dim=1, keepdim=True).clamp_min(1e-6)
    return torch.cat([feats, beta, x], dim=1)


def _settings(args) -> dict:
    """The oracle settings of :mod:`report_resolution` (one RoI size) plus the training settings."""
    return {**rr.dataset_settings(args), "fine": args.fine, "voxel_sizes": list(args.voxel_sizes), "roi_sizes": [args.roi_size],
            "image_sizes": list(args.image_sizes), "sources": list(args.sources), "depth_tolerance_px": 0.5}


def oracle_keys(settings: dict) -> list[str]:
    """The oracle settings (:func:`report_resolution.setting_key`) a run trains and scores, in order."""
    return [rr.setting_key(source, voxel_size, roi_size)
            for source in rr.source_names(settings["sources"], settings["image_sizes"])
            for voxel_size in settings["voxel_sizes"] for roi_size in settings["roi_sizes"]]


SETTING_FIELDS = ("voxel_sizes", "roi_sizes", "image_sizes", "sources")


def scene_settings(settings: dict) -> dict:
    """What defines a scene and its oracle volumes of any one setting: ``settings`` without the lists of
    settings a run covers (:data:`SETTING_FIELDS`; each setting's key names its own)."""
    return {k: v for k, v in settings.items() if k not in SETTING_FIELDS}


def write_scene_volumes(job: tuple[str, str, dict]) -> None:
    """Rebuild one scene, write its oracle volumes (one (O, 1, r, r, r) array per setting), labels and types;
    the volumes of other settings that the scene's file already holds (same scene settings) are kept."""
    name, path, settings = job
    spec = rr.scene_spec(name, settings)
    volumes = rr.oracle_volumes(spec, settings)
    arrays = {f"volume/{key}": volumes[key].numpy().astype(np.float32) for key in oracle_keys(settings)}
    previous = read_scene_volumes(Path(path), settings, keys=())
    if previous is not None:
        arrays = {**{k: v for k, v in previous.items() if k.startswith("volume/")}, **arrays}
    arrays["labels"] = np.array([o.is_anomalous for o in spec.objects], dtype=np.int64)
    arrays["types"] = np.array([o.kind or "normal" for o in spec.objects], dtype=np.str_)
    arrays["settings"] = np.array(json.dumps(scene_settings(settings), sort_keys=True))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(Path(path), buffer.getvalue())


def read_scene_volumes(path: Path, settings: dict | None = None, keys=None) -> dict | None:
    """A scene file of :func:`write_scene_volumes` (never unpickled), or None when it is missing, was written
    for other scene settings (:func:`scene_settings`) or lacks the volumes of a setting in ``keys`` (default:
    every :func:`oracle_keys` of ``settings``). A file that cannot be read is an error naming it."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            record = {key: data[key] for key in data.files}
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable oracle-volume file ({error}); delete it to rebuild the scene") from None
    for field in ("labels", "types", "settings"):
        if field not in record:
            raise ValueError(f"{path}: field {field!r} is missing; delete the file to rebuild the scene")
    if settings is not None:
        if scene_settings(json.loads(str(record["settings"]))) != scene_settings(settings):
            return None
        if any(f"volume/{key}" not in record for key in (oracle_keys(settings) if keys is None else keys)):
            return None
    return record


def build_detector(variant: str, roi_size: int, defaults, token_patch: int = 1, *,
                   anchor: bool = False, difference: bool = False, distance: bool = True,
                   messages: bool = False) -> "torch.nn.Module":
    """An :class:`~oddsparse.models.detector.OddOneOutDetector` with the recipe's matcher settings (``defaults``:
    a ``train_partsad.Config``) for volumes of :func:`oracle_features`, its tokens ``token_patch`` cells per axis,
    its logit anchored on the distance inputs with ``anchor`` (``matcher_distance_anchor``; not for A), its head
    reading where each object differs from the others with ``difference`` (``matcher_difference_input``; not for A),
    without the distance inputs where ``distance`` is False, with difference messages where ``messages``
    (``matcher_difference_messages``; not for A).
    Its scene model is a small one that only carries the channel counts (8 volume channels, 8 beta channels);
    it is never run."""
    from oddsparse.geometry.grid import VoxelGrid
    from oddsparse.models.detector import OddOneOutDetector
    from oddsparse.models.scene_model import SceneModel

    width = len(FEATURES)
    scene_model = SceneModel(grid=VoxelGrid(shape=(8, 8, 8), voxel_size=0.04), feature_channels=8, backbone="dense",
                             backbone_channels=(width, width, width, width), feature_dim=width)
    return OddOneOutDetector(scene_model, variant=variant, density_threshold=defaults.density_threshold,
                             roi_size=roi_size, k=defaults.matcher_k, heads=defaults.matcher_heads,
                             blocks=defaults.matcher_blocks, dim=defaults.matcher_dim,
                             matcher_distance_input=distance and defaults.matcher_distance_input and variant != "A",
                             matcher_distance_anchor=anchor and variant != "A",
                             matcher_difference_input=difference and variant != "A",
                             matcher_difference_messages=messages and variant != "A",
                             token_patch=token_patch)


def volume_cache(records: list[dict], key: str):
    """:class:`~oddsparse.train.engine.ObjectVolumeCache` of one oracle setting over scene records."""
    from oddsparse.train.engine import ObjectVolumeCache

    volumes = torch.cat([oracle_features(torch.from_numpy(r[f"volume/{key}"])) for r in records])
    labels = torch.cat([torch.from_numpy(r["labels"]) for r in records])
    group = torch.cat([torch.full((len(r["labels"]),), i, dtype=torch.int64) for i, r in enumerate(records)])
    return ObjectVolumeCache(volumes, labels, group)


def _stamp(variant: str, key: str, settings: dict, training: dict) -> dict:
    """What a matcher's training depends on: its setting's volumes (scene settings and key), variant, training."""
    return {"settings": scene_settings(settings), "training": training, "variant": variant, "key": key}


def matcher_path(out: Path, key: str, variant: str, training: dict) -> Path:
    """File of one matcher, named by its setting, variant and training, e.g.
    ``OUT/matchers/solid_0.01_8_full_500x8_lr0.0005_seed0.pt`` (``..._train100.pt`` with ``--train-limit 100``):
    runs of other training settings into one ``--out`` keep their matchers side by side."""
    tag = f"{training['steps']}x{training['batch']}_lr{training['lr']:g}_seed{training['seed']}"
    if training.get("token_patch", 1) > 1:
        tag += f"_patch{training['token_patch']}"
    if training.get("rank_weight", 0) > 0:
        tag += f"_rank{training['rank_weight']:g}"
    for switch, off, suffix, _ in MATCHER_SWITCHES:
        if training.get(switch, off) != off:
            tag += suffix
    if training.get("train_limit", 0) > 0:
        tag += f"_train{training['train_limit']}"
    return out / "matchers" / f"{key.replace('/', '_')}_{variant}_{tag}.pt"


def _saved_matcher(path: Path, variant: str, key: str, settings: dict, training: dict) -> dict | None:
    """The matcher file at ``path`` (weights only) when it was trained as ``_stamp`` says, else None."""
    if not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    stamp = json.loads(saved.get("stamp", "{}"))
    stamp["settings"] = scene_settings(stamp.get("settings", {}))
    return saved if stamp == _stamp(variant, key, settings, training) else None


def _is_trained(path: Path, variant: str, key: str, settings: dict, training: dict) -> bool:
    return _saved_matcher(path, variant, key, settings, training) is not None


def _train_job(job: tuple) -> str:
    """Train (or find) one matcher in a worker: its training scenes are read from their files there. A progress bar
    when ``progress`` (the job runs in the main process; bars of parallel workers would interleave)."""
    import train_partsad  # noqa: E402

    path, variant, key, paths, settings, training, progress = job
    records = [read_scene_volumes(Path(p)) for p in paths]
    trained_matcher(Path(path), variant, key, records, settings, training, train_partsad.Config(), progress=progress)
    return f"{key}, variant {variant}"


def trained_matcher(path: Path, variant: str, key: str, records: list[dict], settings: dict, training: dict,
                    defaults, progress: bool = True) -> tuple[torch.nn.Module, float]:
    """The detector of ``variant`` with its matcher trained on ``records``' volumes of ``key``, loaded from
    ``path`` (weights only) when it was trained the same way (:func:`_stamp`); returns it and the mean loss of the
    last tenth of its steps."""
    from oddsparse.train.engine import train_matcher_on_cache

    torch.manual_seed(training["seed"])
    detector = build_detector(variant, settings["roi_sizes"][0], defaults, training.get("token_patch", 1),
                              **{keyword: training.get(switch, off) for switch, off, _, keyword in MATCHER_SWITCHES})
    saved = _saved_matcher(path, variant, key, settings, training)
    if saved is not None:
        detector.matcher.load_state_dict(saved["matcher"])
        return detector.eval(), float(saved["final_loss"])
    losses = train_matcher_on_cache(detector, volume_cache(records, key), steps=training["steps"],
                                    batch_size=training["batch"], lr=training["lr"], seed=training["seed"],
                                    progress=progress, rank_weight=training.get("rank_weight", 0.0))
    final = float(np.mean(losses[-max(1, len(losses) // 10):]))
    buffer = io.BytesIO()
    stamp = json.dumps(_stamp(variant, key, settings, training), sort_keys=True)
    torch.save({"stamp": stamp, "matcher": detector.matcher.state_dict(), "final_loss": final}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return detector.eval(), final


@torch.no_grad()
def scene_scores(detector, volumes: np.ndarray) -> list[float]:
    """Anomaly probabilities of one scene's objects, volumes (O, 1, r, r, r) of one oracle setting."""
    scene_index = torch.zeros(volumes.shape[0], dtype=torch.int64)
    logits, _ = detector.score_volumes(oracle_features(torch.from_numpy(volumes)), scene_index)
    return torch.sigmoid(logits).tolist()


def distance_columns(detector, volumes: np.ndarray) -> np.ndarray:
    """(O, 3) the matcher's distance inputs of one scene (:meth:`OddOneOutDetector.distance_inputs`: opacity,
    F_v, beta; standardised within the scene) on volumes of one oracle setting."""
    scene_index = torch.zeros(volumes.shape[0], dtype=torch.int64)
    return detector.distance_inputs(oracle_features(torch.from_numpy(volumes)), scene_index).double().numpy()


def fitted_distance(detector, train: list[dict], test: list[dict], key: str) -> tuple[list[list[float]] | None, dict | None]:
    """The ``distance_fit`` scorer: a logistic regression (:func:`~oddsparse.eval.baselines.fit_distance_weights`)
    of the anomaly labels on the three distance inputs of every training object (:func:`distance_columns`), applied
    to the test scenes: how far a learned weighting of the parameter-free distances goes, the least a trained
    matcher that sees them should read. Returns the test scenes' scores and ``{"weights": {...}, "bias": b}``,
    or ``(None, None)`` where the training labels hold one class."""
    from oddsparse.eval.baselines import fit_distance_weights
    from oddsparse.models.detector import DISTANCE_GROUPS

    fit = fit_distance_weights(np.concatenate([distance_columns(detector, r[f"volume/{key}"]) for r in train]),
                               np.concatenate([r["labels"] for r in train]))
    if fit is None:
        return None, None  # nothing to fit: the training objects are all normal (or all anomalous)
    weights, bias = fit
    scores = [(distance_columns(detector, r[f"volume/{key}"]) @ np.array(weights) + bias).tolist() for r in test]
    return scores, {"weights": dict(zip(DISTANCE_GROUPS, weights)), "bias": bias}


def distance_scores(volumes: np.ndarray) -> list[float]:
    """The parameter-free scorer of ``report_resolution`` on the same volumes (median distance to the others)."""
    return distance_to_others(torch.from_numpy(volumes), torch.zeros(volumes.shape[0], dtype=torch.int64)).tolist()


def score_report(records: list[dict], names: list[str], scores: list[list[float]], views: int) -> dict:
    """object_AUROC (per scene and pooled) and per anomaly type on GT boxes, plus the per-scene AUROCs."""
    predictions, annotations = [], []
    for record, name, values in zip(records, names, scores):
        labels = torch.from_numpy(record["labels"]).bool()
        boxes = YawBoxes(torch.arange(len(labels), dtype=torch.float32)[:, None].repeat(1, 3) * 10,
                         torch.ones(len(labels), 3), torch.zeros(len(labels)))  # GT boxes: only identity matters
        annotations.append(SceneAnnotation(boxes=boxes, labels=labels, types=[str(t) for t in record["types"]],
                                           num_views=views, name=name))
        predictions.append(ScenePrediction(boxes=boxes, scores=torch.tensor(values)))
    report = evaluate_objects(predictions, annotations)
    per_scene = [{"name": name, "object_AUROC": binary_auroc(values, record["labels"].astype(bool))}
                 for record, name, values in zip(records, names, scores)]  # GT boxes: every object is matched
    return {"object_AUROC": report["object_AUROC"], "object_AUROC_pooled": report["object_AUROC_pooled"],
            "object_accuracy": report["object_accuracy"],
            "per_type": {t: v["object_AUROC"] for t, v in report["per_type"].items()}, "per_scene": per_scene}


def main(argv=None) -> dict:
    import train_partsad  # noqa: E402  (the synthetic default's settings)
    from tqdm.auto import tqdm

    from oddsparse.data.synth import dataset_splits
    from oddsparse.eval.compare import bootstrap_object_auroc

    defaults = train_partsad.Config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    rr.add_scene_arguments(parser, defaults, views_help="input views of the hull oracle",
                           scenes_help="scenes of the generated dataset (its train split trains, its test split is scored)")
    parser.add_argument("--train-limit", type=int, default=0, help="train on the first N training scenes (0: all)")
    parser.add_argument("--test-limit", type=int, default=0, help="score the first N test scenes (0: all)")
    parser.add_argument("--fine", type=float, default=0.005, help="fine lattice (metres)")
    parser.add_argument("--voxel-sizes", type=float, nargs="+", default=[0.02, 0.01])
    parser.add_argument("--roi-size", type=int, default=8, help="cells per axis of an object volume (the matcher's r)")
    parser.add_argument("--token-patch", type=int, default=1,
                        help="cells per axis of one matcher token (the detector's token_patch: --roi-size 16 "
                             "--token-patch 2 reads 16^3 cells as 8^3 tokens)")
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[128], help="image sizes of the hull oracle")
    parser.add_argument("--sources", nargs="+", choices=("solid", "hull"), default=["solid", "hull"])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["full", "A"])
    parser.add_argument("--steps", type=int, default=500, help="matcher training steps per setting and variant")
    parser.add_argument("--batch", type=int, default=defaults.matcher_warmup_batch, help="scenes per step")
    parser.add_argument("--lr", type=float, default=defaults.lr_warmup, help="Adam learning rate")
    parser.add_argument("--rank-weight", type=float, default=0.0,
                        help="weight of the within-scene ranking term beside BCE (engine.train_matcher_on_cache)")
    parser.add_argument("--anchor", action="store_true",
                        help="B and full score the sum of the distance inputs plus a learned correction starting at "
                             "zero (the recipes' --matcher_distance_anchor)")
    parser.add_argument("--difference-input", action="store_true",
                        help="the head of B and full also reads where each object differs from the others, per cell "
                             "(the recipes' --matcher_difference_input)")
    parser.add_argument("--no-distance-input", action="store_true",
                        help="B and full without the distance inputs (the paper's matcher; the recipes' "
                             "--no-matcher_distance_input)")
    parser.add_argument("--difference-messages", action="store_true",
                        help="the attention of B and full passes each token the attended values minus its own "
                             "(the recipes' --matcher_difference_messages)")
    parser.add_argument("--workers", type=int, default=1, help="processes building scene volumes and training matchers")
    args = parser.parse_args(argv)
    rr.check_scene_arguments(parser, args)
    for option in ("train_limit", "test_limit"):
        if getattr(args, option) < 0:
            parser.error(f"--{option.replace('_', '-')} must be >= 0, got {getattr(args, option)}")
    if args.steps < 1 or args.batch < 1:
        parser.error(f"--steps and --batch must be >= 1, got {args.steps} and {args.batch}")
    if args.roi_size < 2 or args.roi_size & (args.roi_size - 1):
        parser.error(f"--roi-size must be a power of two >= 2, got {args.roi_size}")

    settings = _settings(args)
    if args.token_patch < 1 or args.roi_size % args.token_patch or args.roi_size // args.token_patch < 2:
        parser.error(f"--token-patch must divide --roi-size={args.roi_size} into 2 or more tokens per axis, "
                     f"got {args.token_patch}")
    training = {"steps": args.steps, "batch": args.batch, "lr": args.lr, "seed": args.seed}
    if args.token_patch > 1:  # absent at 1: the matchers of earlier runs keep their stamps
        training["token_patch"] = args.token_patch
    if args.rank_weight > 0:  # likewise absent at 0
        training["rank_weight"] = args.rank_weight
    if args.train_limit > 0:  # likewise absent at 0 (all training scenes): matchers of fewer scenes stay apart
        training["train_limit"] = args.train_limit
    if args.anchor and args.no_distance_input:
        parser.error("--anchor scores the distance inputs: it cannot go with --no-distance-input")
    for switch, off, _, _ in MATCHER_SWITCHES:  # likewise each absent where its flag is not given
        if getattr(args, SWITCH_OPTIONS[switch]):
            training[switch] = not off
    splits = dataset_splits(args.family, args.scenes, args.seed)
    names = {"train": splits["train"][:args.train_limit or None], "test": splits["test"][:args.test_limit or None]}
    volume_dir = args.out / "volumes"
    volume_dir.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict] = {}
    wanted = names["train"] + names["test"]
    for name in wanted:
        record = read_scene_volumes(volume_dir / f"{name}.npz", settings)
        if record is not None:
            records[name] = record
    todo = [(name, str(volume_dir / f"{name}.npz"), settings) for name in wanted if name not in records]
    bar = tqdm(total=len(wanted), initial=len(wanted) - len(todo), desc="oracle volumes", unit="scene")
    for _ in rr.run_jobs(write_scene_volumes, todo, args.workers):
        bar.update(1)
    bar.close()
    for name, _, _ in todo:
        records[name] = read_scene_volumes(volume_dir / f"{name}.npz", settings)
    train = [records[n] for n in names["train"]]
    test = [records[n] for n in names["test"]]

    jobs = [(matcher_path(args.out, key, variant, training), variant, key)
            for variant in args.variants for key in oracle_keys(settings)]  # every setting's first variant first
    todo = [(path, variant, key) for path, variant, key in jobs if not _is_trained(path, variant, key, settings, training)]
    in_process = rr.runs_in_process(todo, args.workers)
    todo = [(str(path), variant, key, [str(volume_dir / f"{n}.npz") for n in names["train"]], settings, training,
             in_process) for path, variant, key in todo]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} matchers trained before; training {len(todo)} on "
          f"{len(train)} training scenes ({args.steps} steps of {args.batch} scenes each)")
    for done in rr.run_jobs(_train_job, todo, args.workers):
        print(f"trained {done}")
    results: dict[str, dict] = {}
    for key in oracle_keys(settings):
        column = {"distance": score_report(test, names["test"], [distance_scores(r[f"volume/{key}"]) for r in test],
                                           args.views)}
        fit_scores, fit = fitted_distance(build_detector("full", settings["roi_sizes"][0], defaults), train, test, key)
        if fit is not None:
            column["distance_fit"] = dict(score_report(test, names["test"], fit_scores, args.views), fit=fit)
        for path, variant, job_key in jobs:
            if job_key != key:
                continue
            detector, final_loss = trained_matcher(path, variant, key, train, settings, training, defaults)
            column[variant] = score_report(test, names["test"], [scene_scores(detector, r[f"volume/{key}"])
                                                                 for r in test], args.views)
            column[variant]["final_loss"] = final_loss
        for name, report in column.items():
            interval, diff = bootstrap_object_auroc(report, None if name == "distance" else column["distance"])
            report["object_AUROC_95"] = None if interval is None else list(interval)
            report["minus_distance_95"] = None if diff is None else list(diff)
            if name in VARIANTS and "distance_fit" in column:  # a matcher against the fitted distances it sees
                diff = bootstrap_object_auroc(report, column["distance_fit"])[1]
                report["minus_distance_fit_95"] = None if diff is None else list(diff)
        results[key] = column
    report = {**settings, "training": training, "variants": list(args.variants),
              "num_train_scenes": len(train), "num_test_scenes": len(test),
              "features": list(FEATURES), "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "oracle_matcher.json", (json.dumps(report, indent=2) + "\n").encode())
    types = sorted({t for column in results.values() for r in column.values() for t in r["per_type"]})
    print(f"{'setting':20s} {'scorer':12s} {'AUROC':>6s} {'95% CI':>11s} {'- dist':>13s} " + " ".join(f"{t:>6s}" for t in types))
    for key, column in results.items():
        for scorer, r in column.items():
            ci = "n/a" if r["object_AUROC_95"] is None else "{:.2f}-{:.2f}".format(*r["object_AUROC_95"])
            diff = "" if r["minus_distance_95"] is None else "{:+.2f} to {:+.2f}".format(*r["minus_distance_95"])
            print(f"{key:20s} {scorer:12s} {rr._fmt(r['object_AUROC']):>6s} {ci:>11s} {diff:>13s} "
                  + " ".join(f"{rr._fmt(r['per_type'].get(t)):>6s}" for t in types))
    _figure(report, types, args.out / "oracle_matcher.png")
    print(f"wrote {args.out / 'oracle_matcher.json'}, {args.out / 'oracle_matcher.png'}")
    return report


def _tick(key: str) -> str:
    """Tick label of a setting: ``solid/0.02/8`` reads ``solid`` over ``2 cm``."""
    source, voxel_size, _ = key.split("/")
    return f"{source}\n{100 * float(voxel_size):g} cm"


def _figure(report: dict, types: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(report["results"])
    panels = ["all"] + types
    scorers = [s for s in SCORERS if any(s in column for column in report["results"].values())]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels) + 1.2, 3.4), sharey=True, squeeze=False)
    width = 0.8 / len(scorers)
    for axis, panel in zip(axes[0], panels):
        for s, scorer in enumerate(scorers):
            values = []
            for key in keys:
                r = report["results"][key].get(scorer)
                value = None if r is None else (r["object_AUROC"] if panel == "all" else r["per_type"].get(panel))
                values.append(np.nan if value is None else value)
            axis.bar(np.arange(len(keys)) + (s - (len(scorers) - 1) / 2) * width, values, width, label=scorer)
        axis.set_xticks(np.arange(len(keys)), [_tick(k) for k in keys], fontsize=6)
        axis.axhline(0.5, color="0.6", linestyle=":", linewidth=1)
        axis.axhline(0.9, color="0.8", linestyle="-", linewidth=1)
        axis.set_title(panel, fontsize=9)
        axis.set_ylim(0.3, 1.02)
    axes[0][0].set_ylabel("object_AUROC (GT boxes, per scene)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center right")
    r, patch = report["roi_sizes"][0], report["training"].get("token_patch", 1)
    cells = f"{r}^3 cells" + (f" as {r // patch}^3 tokens" if patch > 1 else "")
    fig.suptitle(f"{report['family']}: matchers trained on oracle volumes ({report['num_train_scenes']} training, "
                 f"{report['num_test_scenes']} test scenes, {cells}, "
                 f"{report['training']['steps']} steps) vs the distance to the others", fontsize=8)
    fig.tight_layout(rect=(0.0, 0.0, 0.9, 1.0))
    save_figure(fig, path, dpi=130)


if __name__ == "__main__":
    main()
