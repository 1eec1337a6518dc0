"""SceneDataset splits, view sampling, collation and bad-scene skipping on fake roots built from the sample."""
from __future__ import annotations

import json
import os
import shutil
import warnings

import pytest
import torch
from torch.utils.data import DataLoader

from oddsparse.data import SceneDataset, SceneFormatError, collate_scenes, read_scene
from oddsparse.structures import SceneBatch
from reference_data import copy_scene, require_sample


def _link_root(root, names):
    """A dataset root whose scene folders are symlinks to the real sample."""
    sample = require_sample()
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        os.symlink(sample, root / name, target_is_directory=True)
    return root


TOY_NAMES = ["car_003", "car_001", "car_005", "car_002", "car_004", "mug_001", "plane_002", "plane_001",
             "banana_007"]


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    root = _link_root(tmp_path_factory.mktemp("toysad") / "toys", TOY_NAMES)
    (root / "notes").mkdir()  # a folder that is not a scene is ignored
    return root


@pytest.fixture(scope="module")
def small_scenes(tmp_path_factory):
    """Two 4-view scenes: one with the sample's 3 objects, one with 2 (object.002 removed)."""
    base = tmp_path_factory.mktemp("small")
    three = copy_scene(base / "root" / "car_001", views=range(4), num_poses=4)
    two = copy_scene(base / "root" / "car_002", views=range(4), num_poses=4, drop_objects=["object.002"])
    return base / "root", three, two


# ----------------------------------------------------------------------------- splits


def test_default_toys_splits(toy_root):
    def names(split):
        return [p.name for p in SceneDataset(toy_root, split=split).scenes]

    # car: 5 scenes -> first 4 train, last 1 seen; plane: 2 -> round(1.6) = 2 train; mug, banana unseen
    assert names("train") == ["car_001", "car_002", "car_003", "car_004", "plane_001", "plane_002"]
    assert names("seen") == ["car_005"]
    assert names("unseen") == ["banana_007", "mug_001"]
    assert names("test") == ["banana_007", "car_005", "mug_001"]
    assert names("all") == sorted(TOY_NAMES)
    assert SceneDataset(toy_root, split="train").family == "toys"


def test_default_parts_splits(tmp_path):
    names = [f"part_{i:03d}" for i in range(10)]
    root = _link_root(tmp_path / "PartsAD-15K", names[::-1])
    train = SceneDataset(root, split="train")
    assert train.family == "parts"
    assert [p.name for p in train.scenes] == names[:8]
    assert [p.name for p in SceneDataset(root, split="test").scenes] == names[8:]
    with pytest.raises(ValueError, match="unseen"):
        SceneDataset(root, split="unseen")
    # an explicit family overrides the folder name
    assert SceneDataset(root, split="train", family="toys").family == "toys"
    # the name read is the root's as given, not its symlink target's
    stored = tmp_path / "store-x"
    root.rename(stored)
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "PartsAD").symlink_to(stored, target_is_directory=True)
    assert SceneDataset(tmp_path / "links" / "PartsAD", split="train").family == "parts"


def test_splits_file(tmp_path):
    root = _link_root(tmp_path / "toys", ["car_001", "car_002", "mug_001", "cup_001"])
    splits = {"train": ["mug_001", "car_002"], "test": ["car_001", "cup_001"], "unseen": ["cup_001"]}
    (root / "splits.json").write_text(json.dumps(splits))
    assert [p.name for p in SceneDataset(root, split="train").scenes] == ["car_002", "mug_001"]
    assert [p.name for p in SceneDataset(root, split="test").scenes] == ["car_001", "cup_001"]
    assert [p.name for p in SceneDataset(root, split="unseen").scenes] == ["cup_001"]
    with pytest.raises(ValueError, match="seen"):
        SceneDataset(root, split="seen")
    # a listed scene that is missing: an error naming the file and split, or a skip
    splits["test"].append("cup_404")
    (root / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(SceneFormatError) as info:
        SceneDataset(root, split="test")
    assert info.value.path == root / "splits.json" and info.value.field == "test" and "cup_404" in str(info.value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = SceneDataset(root, split="test", skip_bad=True)
    assert [p.name for p in dataset.scenes] == ["car_001", "cup_001"]
    assert [name for name, _ in dataset.skipped] == ["cup_404"]
    assert dataset.splits["unseen"] == ["cup_001"] and "cup_404" in dataset.splits["test"]


def test_splits_file_older_seen_unseen_names(tmp_path):
    """Splits files of earlier generator versions name the subsets test_seen / test_unseen."""
    root = _link_root(tmp_path / "toys", ["car_001", "car_002", "cup_001"])
    (root / "splits.json").write_text(json.dumps({"family": "toys", "train": ["car_002"], "test": ["car_001", "cup_001"],
                                                  "test_seen": ["car_001"], "test_unseen": ["cup_001"]}))
    assert [p.name for p in SceneDataset(root, split="seen").scenes] == ["car_001"]
    assert [p.name for p in SceneDataset(root, split="unseen").scenes] == ["cup_001"]
    assert "test_seen" not in SceneDataset(root, split="test").splits


def test_malformed_splits_file(tmp_path):
    root = _link_root(tmp_path / "toys", ["car_001"])
    (root / "splits.json").write_text('{"train": ["car_001"]')
    with pytest.raises(SceneFormatError) as info:
        SceneDataset(root)
    assert info.value.path == root / "splits.json"
    (root / "splits.json").write_text('{"train": ["car_001"]}')
    with pytest.raises(SceneFormatError) as info:
        SceneDataset(root)
    assert info.value.field == "test"
    (root / "splits.json").write_text(json.dumps({"train": [], "test": ["car_001", "car_001"]}))
    with pytest.raises(SceneFormatError, match=r"field 'test': lists 1 scene\(s\) more than once \(\['car_001'\]\)"):
        SceneDataset(root)  # it would count twice in every metric
    (root / "splits.json").write_text(json.dumps({"train": [], "test": ["car_001"]}), encoding="utf-16")
    with pytest.raises(SceneFormatError, match="not UTF-8 text") as info:
        SceneDataset(root)
    assert info.value.path == root / "splits.json"


def test_two_scene_folders_of_one_name_are_refused(tmp_path):
    """Splits name scenes by folder name, so two nested folders of one name cannot both be meant: an error naming
    both, where one of them used to be dropped silently."""
    root = tmp_path / "toys"
    _link_root(root / "batch1", ["car_001"])
    _link_root(root / "batch2", ["car_001", "car_002"])
    with pytest.raises(SceneFormatError, match="a second scene folder named 'car_001'") as info:
        SceneDataset(root, split="all")
    assert "batch1" in str(info.value) and "batch2" in str(info.value)


# ----------------------------------------------------------------------------- view sampling


def test_view_sampling(toy_root):
    dataset = SceneDataset(toy_root, split="train", num_input_views=3, num_target_views=2, image_size=32)
    item = dataset[0]
    inputs, targets = item["inputs"].view_ids.tolist(), item["targets"].view_ids.tolist()
    assert len(inputs) == 3 and len(targets) == 2 and not set(inputs) & set(targets)
    assert all(0 <= v < 20 for v in inputs + targets)
    # deterministic: a second dataset with the same seed and epoch draws the same views
    again = SceneDataset(toy_root, split="train", num_input_views=3, num_target_views=2, image_size=32)
    assert again.sample_views(0, 20) == (inputs, targets)
    # draws differ across items and epochs
    draws = {tuple(map(tuple, dataset.sample_views(i, 20))) for i in range(len(dataset))}
    dataset.set_epoch(1)
    draws |= {tuple(map(tuple, dataset.sample_views(i, 20))) for i in range(len(dataset))}
    assert len(draws) > len(dataset)
    # the item holds exactly those stored views
    reference = read_scene(dataset.scenes[0], views=inputs + targets, image_size=32)
    assert torch.equal(item["inputs"].images, reference.images[:3])
    assert torch.equal(item["targets"].masks, reference.masks[:, 3:])
    assert torch.equal(item["targets"].K, reference.K[3:])


def test_test_split_has_no_targets(toy_root):
    dataset = SceneDataset(toy_root, split="unseen", num_input_views=None, image_size=16)
    item = dataset[1]
    assert item["targets"] is None
    assert item["inputs"].view_ids.tolist() == list(range(20))  # all views at test


def test_too_many_views_requested(small_scenes):
    root, _, _ = small_scenes
    dataset = SceneDataset(root, split="all", num_input_views=3, num_target_views=2)
    with pytest.raises(SceneFormatError, match="4 views"):
        dataset[0]


# ----------------------------------------------------------------------------- collation


def test_collate_different_object_counts(small_scenes):
    root, three, two = small_scenes
    dataset = SceneDataset(root, split="all", num_input_views=2, num_target_views=1)
    assert [p.name for p in dataset.scenes] == ["car_001", "car_002"]
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate_scenes)
    batch = next(iter(loader))
    inputs, targets = batch["inputs"], batch["targets"]
    assert isinstance(inputs, SceneBatch) and isinstance(targets, SceneBatch)
    assert inputs.images.shape == (2, 2, 256, 256, 3) and targets.images.shape == (2, 1, 256, 256, 3)
    assert inputs.num_objects.tolist() == [3, 2]
    assert inputs.object_batch_index.tolist() == [0, 0, 0, 1, 1]
    assert inputs.masks.shape == (5, 2, 256, 256)
    item0, item1 = dataset[0], dataset[1]
    assert torch.equal(inputs.masks[3:], item1["inputs"].masks)
    assert torch.equal(inputs.masks[:3], item0["inputs"].masks)
    assert torch.equal(inputs.labels, torch.cat([item0["inputs"].labels, item1["inputs"].labels]))
    assert torch.equal(inputs.boxes.center[3:], item1["inputs"].boxes.center)
    assert torch.equal(inputs.K[1], item1["inputs"].K) and torch.equal(inputs.images[0], item0["inputs"].images)
    expected_targets = torch.stack([item0["targets"].view_ids, item1["targets"].view_ids])
    assert torch.equal(targets.view_ids, expected_targets)
    assert batch["index"].tolist() == [0, 1]
    assert inputs.view_valid.all()


def test_collate_pads_views(small_scenes):
    _, three, two = small_scenes
    a = read_scene(three, views=[0, 1, 2], image_size=16)
    b = read_scene(two, views=[3], image_size=16)
    batch = collate_scenes([a, b])
    assert batch.images.shape == (2, 3, 16, 16, 3)
    assert batch.view_valid.tolist() == [[True, True, True], [True, False, False]]
    assert batch.view_ids.tolist() == [[0, 1, 2], [3, -1, -1]]
    assert torch.equal(batch.images[1, 0], b.images[0]) and (batch.images[1, 1:] == 0).all()
    assert torch.isinf(batch.depth[1, 1:]).all()
    assert torch.equal(batch.K[1, 1], torch.eye(3))
    assert not batch.masks[3:, 1:].any() and torch.equal(batch.masks[3:, :1], b.masks)
    with pytest.raises(ValueError, match="image sizes"):
        collate_scenes([a, read_scene(two, views=[3], image_size=8)])


# ----------------------------------------------------------------------------- bad scenes


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad") / "toys"
    for name in ("car_001", "car_002"):
        copy_scene(root / name, views=range(4), num_poses=4)
    json_bad = copy_scene(root / "car_003", views=range(4), num_poses=4)
    (json_bad / "scene3d.metadata.json").write_text("{not json")
    no_mask = copy_scene(root / "car_004", views=range(4), num_poses=4)
    shutil.rmtree(no_mask / "segmentations" / "object")
    copy_scene(root / "car_005", views=range(3), num_poses=4)  # view 0003 of the 4 poses is missing
    copy_scene(root / "car_006", views=range(2), num_poses=2)  # too few views for 2 + 1
    corrupt = copy_scene(root / "car_007", views=range(4), num_poses=4)
    (corrupt / "RGB" / "0000.png").write_bytes(b"broken")
    (corrupt / "RGB" / "0001.png").write_bytes(b"broken")
    (corrupt / "RGB" / "0002.png").write_bytes(b"broken")
    (corrupt / "RGB" / "0003.png").write_bytes(b"broken")
    return root


def test_skip_bad_reports(bad_root):
    with pytest.warns(UserWarning, match="skipped 4 of 7"):
        dataset = SceneDataset(bad_root, split="all", num_input_views=2, num_target_views=1, skip_bad=True,
                               image_size=16)
    assert [p.name for p in dataset.scenes] == ["car_001", "car_002", "car_007"]
    reasons = dict(dataset.skipped)
    assert sorted(reasons) == ["car_003", "car_004", "car_005", "car_006"]
    assert "malformed JSON" in reasons["car_003"] and "scene3d.metadata.json" in reasons["car_003"]
    assert "mask folder" in reasons["car_004"]
    assert "0003" in reasons["car_005"] and "RGB" in reasons["car_005"]
    assert "needs 3" in reasons["car_006"]
    report = dataset.report()
    assert "7 listed, 3 used, 4 skipped" in report
    assert all(name in report for name in reasons)
    # car_007 passes the listing check (its files exist) but cannot be decoded: replaced by the next scene
    with pytest.warns(UserWarning, match="unreadable"):
        item = dataset[2]
    assert item["index"] == 0 and dataset.load_failures[0][0] == "car_007"
    assert "car_007" in dataset.report()


def test_bad_scene_raises_without_skip(bad_root):
    dataset = SceneDataset(bad_root, split="all", num_input_views=2, num_target_views=1)
    assert len(dataset) == 7 and dataset.skipped == []
    with pytest.raises(SceneFormatError) as info:
        dataset[2]  # car_003
    assert info.value.path == bad_root / "car_003" / "scene3d.metadata.json"
