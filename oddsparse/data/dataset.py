"""A torch Dataset over a root of published-format scene folders, with the official splits.

Splits file
    ``<root>/splits.json`` (written by the published datasets' split lists and by
    ``oddsparse.data.synth``'s generator) is a JSON object mapping split names to lists of scene
    folder names (not paths)::

        {"train": ["toycar_001", ...], "test": [...], "seen": [...], "unseen": [...]}

    ``train`` and ``test`` are required; ``seen`` and ``unseen`` (the test scenes of categories
    seen / not seen in training) are optional (``test_seen`` / ``test_unseen``, the names earlier
    versions of the generator wrote, are read as ``seen`` / ``unseen``). A split missing from the
    file is an error when asked for. ``all`` is every scene found under the root.

Without a splits file
    * ToysAD (``family="toys"``): the category is the scene name before its first ``_``. The
      paper's 12 unseen categories (:data:`UNSEEN_CATEGORIES`) form ``unseen``. Scenes of the other
      (seen) categories are split per category, in sorted name order: the first 80% (rounded half
      up) are ``train``, the rest ``seen``. ``test`` = ``seen`` + ``unseen``.
    * PartsAD (``family="parts"``): sorted name order, first 80% (rounded half up) ``train``, the
      rest ``test``; ``seen`` / ``unseen`` are not defined.
    * ``family="auto"`` picks ``"parts"`` when the root folder's name contains ``"part"``
      (case-insensitive), else ``"toys"``.

Items
    ``dataset[i]`` is a dict ``{"inputs": Scene, "targets": Scene | None, "index": int}``:
    ``inputs`` holds M input views, ``targets`` T further views disjoint from them (the render
    targets of training), ``None`` when T = 0. Both Scenes carry the same objects, boxes and labels;
    ``view_ids`` say which stored views each holds. Views are drawn without replacement from the
    scene's stored views by a generator seeded with ``(seed, epoch, index)`` and sorted, so an item
    is reproducible; call :meth:`SceneDataset.set_epoch` each epoch for new draws.
    ``collate_scenes`` turns a list of items into ``{"inputs": SceneBatch, "targets": SceneBatch |
    None, "index": (B,) int64}`` for a DataLoader.
"""
from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from oddsparse.data.scene_io import (BOX_SOURCES, BoxSource, SceneFormatError, category_of, check_scene,
                                     load_json_object, observed_boxes, read_scene, read_scene_metadata)
from oddsparse.structures.scene import Boxes, Scene, SceneBatch
from oddsparse.utils.errors import InputError

__all__ = ["SceneDataset", "collate_scenes", "list_scene_folders", "UNSEEN_CATEGORIES", "SPLITS_FILE",
           "TRAIN_FRACTION"]

#: The 12 ToysAD-8K categories held out from training in the paper.
UNSEEN_CATEGORIES = frozenset({"mug", "plate", "robot", "glass", "sheep", "shoe", "train", "banana", "cup",
                               "key", "penguin", "hammer"})
#: Name of the optional splits file at the dataset root.
SPLITS_FILE = "splits.json"
#: Older split names read as the current ones.
SPLIT_ALIASES = {"test_seen": "seen", "test_unseen": "unseen"}
#: Fraction of scenes used for training when no splits file exists.
TRAIN_FRACTION = 0.8
_METADATA = "scene3d.metadata.json"

Split = Literal["train", "test", "seen", "unseen", "all"]
Family = Literal["auto", "toys", "parts"]


def list_scene_folders(root: Union[str, Path]) -> list[Path]:
    """Scene folders (those holding ``scene3d.metadata.json``) under ``root``, sorted by name.

    Nested folders are searched, but not below a scene folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} is not a folder")
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        if _METADATA in filenames:
            found.append(Path(dirpath))
            dirnames[:] = []
        else:
            dirnames.sort()
    return sorted(found, key=lambda p: (p.name, str(p)))


def _train_count(num: int) -> int:
    return int(math.floor(TRAIN_FRACTION * num + 0.5))


def _default_splits(names: Sequence[str], family: str) -> dict[str, list[str]]:
    names = sorted(names)
    if family == "parts":
        cut = _train_count(len(names))
        return {"train": names[:cut], "test": names[cut:]}
    by_category: dict[str, list[str]] = {}
    for name in names:
        by_category.setdefault(category_of(name), []).append(name)
    train, seen, unseen = [], [], []
    for category, members in sorted(by_category.items()):
        if category in UNSEEN_CATEGORIES:
            unseen += members
        else:
            cut = _train_count(len(members))
            train += members[:cut]
            seen += members[cut:]
    return {"train": train, "test": sorted(seen + unseen), "seen": seen, "unseen": unseen}


def _read_splits(file: Path) -> dict[str, list[str]]:
    data = load_json_object(file)  # unreadable, not UTF-8, malformed or not an object: named errors
    for key in ("train", "test"):
        if key not in data:
            raise SceneFormatError(file, key, "missing")
    splits = {}
    for key, value in data.items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            continue  # scalar metadata (e.g. the generator's "family", "seed", "scenes"), not a split
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SceneFormatError(file, key, "must be a list of scene folder names")
        twice = sorted(name for name, count in Counter(value).items() if count > 1)
        if twice:  # a scene listed twice would count twice in every metric
            raise SceneFormatError(file, key, f"lists {len(twice)} scene(s) more than once ({twice[:3]})")
        splits[key] = value
    for old, new in SPLIT_ALIASES.items():  # splits files of earlier generator versions
        if old in splits and new not in splits:
            splits[new] = splits.pop(old)
    return splits


class SceneDataset(Dataset):
    """Scenes under a dataset root, one split, with input / target view sampling.

    Args:
        root: dataset root holding scene folders (searched recursively) and optionally ``splits.json``.
        split: ``"train"``, ``"test"``, ``"seen"``, ``"unseen"`` or ``"all"`` (see the module docstring).
        family: ``"toys"`` (ToysAD-8K), ``"parts"`` (PartsAD-15K) or ``"auto"``; only used without a splits file.
        num_input_views: M input views per item; ``None`` loads all stored views (minus the targets).
        num_target_views: T render-target views disjoint from the inputs; default 5 for ``"train"``
            and 0 otherwise.
        image_size: passed to :func:`~oddsparse.data.read_scene`.
        skip_bad: validate every scene at construction (metadata, mask folders, files present) and
            drop bad ones, listing them in :attr:`skipped`; a scene that still fails to decode when
            read is replaced by the next good one and listed in :attr:`load_failures` (per process).
            When False, a bad scene raises :class:`SceneFormatError` when read.
        seed: base seed of the view sampling.
        box_source: the scenes' GT boxes: ``"metadata"`` (published) or ``"observed"`` (fitted to what the
            stored views show, :func:`~oddsparse.data.scene_io.observed_boxes`).

    Attributes:
        scenes: the scene folders of the split, sorted by name.
        splits: every split the root defines (split name -> scene folder names), ``all`` included.
        skipped: ``(scene name, reason)`` of the scenes dropped at construction.
    """

    def __init__(self, root: Union[str, Path], split: Split = "train", family: Family = "auto",
                 num_input_views: Optional[int] = 5, num_target_views: Optional[int] = None,
                 image_size: Union[int, tuple[int, int], None] = None, skip_bad: bool = False, seed: int = 0,
                 box_source: BoxSource = "metadata"):
        if split not in ("train", "test", "seen", "unseen", "all"):
            raise InputError(f"split must be train|test|seen|unseen|all, got {split!r}")
        if family not in ("auto", "toys", "parts"):
            raise ValueError(f"family must be auto|toys|parts, got {family!r}")
        if box_source not in BOX_SOURCES:
            raise ValueError(f"box_source must be one of {', '.join(BOX_SOURCES)}, got {box_source!r}")
        self.box_source = box_source
        self._observed: dict[int, Boxes] = {}  # scene index -> observed_boxes, fitted once per scene and process
        self.root = Path(root)
        self.split = split
        name = Path(os.path.abspath(self.root)).name.lower()  # the root's name as given, not its link target's
        self.family = family if family != "auto" else ("parts" if "part" in name else "toys")
        self.num_input_views = num_input_views
        self.num_target_views = (5 if split == "train" else 0) if num_target_views is None else num_target_views
        if num_input_views is not None and num_input_views < 1:
            raise InputError(f"num_input_views must be >= 1 or None, got {num_input_views}")
        if self.num_target_views < 0:
            raise InputError(f"num_target_views must be >= 0, got {self.num_target_views}")
        self.image_size = image_size
        self.skip_bad = skip_bad
        self.seed = seed
        self.epoch = 0
        self.skipped: list[tuple[str, str]] = []
        self.load_failures: list[tuple[str, str]] = []

        folders = {}
        for folder in list_scene_folders(self.root):  # splits name scenes by folder name: names must be unique
            if folder.name in folders:
                raise SceneFormatError(folder, "<folder name>", f"a second scene folder named {folder.name!r} "
                                       f"(the first: {folders[folder.name]}); scene names must be unique")
            folders[folder.name] = folder
        self.splits_file = self.root / SPLITS_FILE if (self.root / SPLITS_FILE).is_file() else None
        if self.splits_file is not None:
            splits = _read_splits(self.splits_file)
            splits.setdefault("all", sorted(folders))
        else:
            splits = _default_splits(list(folders), self.family)
            splits["all"] = sorted(folders)
        if split not in splits:
            where = self.splits_file or f"the default {self.family} splits"
            raise InputError(f"split {split!r} is not defined by {where} (has {sorted(splits)})")
        self.num_listed = len(splits[split])
        self.splits = {name: list(names) for name, names in splits.items()}

        scenes = []
        for name in sorted(splits[split]):
            folder = folders.get(name)
            if folder is None:
                if not skip_bad:
                    raise SceneFormatError(self.splits_file, split, f"scene {name!r} not found under {self.root}")
                self.skipped.append((name, f"listed in {SPLITS_FILE} but not found under the root"))
                continue
            if skip_bad:
                try:
                    meta = check_scene(folder)
                except SceneFormatError as err:
                    self.skipped.append((name, str(err)))
                    continue
                needed = (num_input_views or 1) + self.num_target_views
                if meta.num_views < needed:
                    self.skipped.append((name, f"has {meta.num_views} views, needs {needed}"))
                    continue
            scenes.append(folder)
        self.scenes = scenes
        if skip_bad and self.skipped:
            warnings.warn(f"SceneDataset skipped {len(self.skipped)} of {self.num_listed} scenes; "
                          "see dataset.report()", stacklevel=2)

    def __len__(self) -> int:
        return len(self.scenes)

    def set_epoch(self, epoch: int) -> None:
        """Change the view draws (call once per epoch, as with DistributedSampler)."""
        self.epoch = int(epoch)

    def sample_views(self, index: int, num_views: int) -> tuple[list[int], list[int]]:
        """(input view ids, target view ids) of item ``index`` for a scene with ``num_views`` stored views."""
        num_targets = self.num_target_views
        num_inputs = num_views - num_targets if self.num_input_views is None else self.num_input_views
        if num_inputs < 1 or num_inputs + num_targets > num_views:
            raise SceneFormatError(self.scenes[index] / "scene3d.metadata.json", "camera.poses",
                                   f"the scene has {num_views} views; {self.num_input_views} input + "
                                   f"{num_targets} target views requested")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        order = rng.permutation(num_views)
        return sorted(order[:num_inputs].tolist()), sorted(order[num_inputs:num_inputs + num_targets].tolist())

    def _load(self, index: int) -> dict:
        folder = self.scenes[index]
        meta = read_scene_metadata(folder)
        inputs, targets = self.sample_views(index, meta.num_views)
        scene = read_scene(folder, views=inputs + targets, image_size=self.image_size)
        if self.box_source == "observed":  # every stored view is read to fit them: once, not at every draw
            if index not in self._observed:
                self._observed[index] = observed_boxes(folder)
            scene = scene.replace(boxes=self._observed[index])
        num_inputs = len(inputs)
        target_scene = None
        if targets:
            target_scene = scene.select_views(list(range(num_inputs, num_inputs + len(targets))))
        return {"inputs": scene.select_views(list(range(num_inputs))), "targets": target_scene, "index": index}

    def __getitem__(self, index: int) -> dict:
        if not self.skip_bad:
            return self._load(index)
        for attempt in range(len(self)):
            current = (index + attempt) % len(self)
            try:
                return self._load(current)
            except SceneFormatError as err:
                self.load_failures.append((self.scenes[current].name, str(err)))
                warnings.warn(f"skipping unreadable scene: {err}", stacklevel=2)
        raise RuntimeError(f"no scene of {self.root} ({self.split}) could be read; see dataset.report()")

    def report(self) -> str:
        """A human-readable summary: scenes listed, used, and each skipped scene with its reason."""
        lines = [f"SceneDataset({self.root}, split={self.split!r}, family={self.family!r}, "
                 f"splits={'file ' + str(self.splits_file) if self.splits_file else 'default'}): "
                 f"{self.num_listed} listed, {len(self.scenes)} used, {len(self.skipped)} skipped"]
        lines += [f"  skipped {name}: {reason}" for name, reason in self.skipped]
        lines += [f"  failed to load {name}: {reason}" for name, reason in self.load_failures]
        return "\n".join(lines)


def collate_scenes(items: Sequence[Union[dict, Scene]]):
    """Collate for a DataLoader.

    Args:
        items: :class:`Scene` objects, or the dicts returned by :class:`SceneDataset`.
    Returns:
        A :class:`~oddsparse.structures.SceneBatch` for Scenes (views padded to the largest count M,
        objects packed with ``object_batch_index``), or for dataset items
        ``{"inputs": SceneBatch, "targets": SceneBatch | None, "index": (B,) int64}``.

    Example:
        >>> loader = DataLoader(dataset, batch_size=4, collate_fn=collate_scenes)  # doctest: +SKIP
    """
    items = list(items)
    if not items:
        raise ValueError("collate_scenes needs at least one item")
    if all(isinstance(item, Scene) for item in items):
        return SceneBatch.from_scenes(items)
    if not all(isinstance(item, dict) and "inputs" in item for item in items):
        raise TypeError("collate_scenes takes Scenes or SceneDataset items (dicts with 'inputs')")
    has_targets = [item.get("targets") is not None for item in items]
    if any(has_targets) and not all(has_targets):
        raise ValueError("cannot collate items with and without target views")
    return {
        "inputs": SceneBatch.from_scenes([item["inputs"] for item in items]),
        "targets": SceneBatch.from_scenes([item["targets"] for item in items]) if all(has_targets) else None,
        "index": torch.tensor([int(item.get("index", -1)) for item in items], dtype=torch.int64),
    }
