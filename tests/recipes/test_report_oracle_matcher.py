"""recipes/report_oracle_matcher.py: the oracle features against a per-cell loop, the scene files'
checks, a matcher that learns a plain difference, and the script end to end (resumable)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recipe_loader import load_recipe


@pytest.fixture(scope="module")
def module():
    return load_recipe("report_oracle_matcher")


def _naive_features(x: np.ndarray) -> np.ndarray:
    """(r, r, r) -> (8, r, r, r) by a loop over cells; cells outside the volume are empty."""
    r = x.shape[0]
    padded = np.zeros((r + 6,) * 3)
    padded[3:-3, 3:-3, 3:-3] = x
    out = np.zeros((8, r, r, r))
    for i in range(r):
        for j in range(r):
            for k in range(r):
                c = (i + 3, j + 3, k + 3)

                def window(w):
                    return padded[c[0] - w:c[0] + w + 1, c[1] - w:c[1] + w + 1, c[2] - w:c[2] + w + 1]

                steps = [np.eye(3, dtype=int)[a] for a in range(3)]
                plus = [padded[tuple(np.add(c, s))] for s in steps]
                minus = [padded[tuple(np.subtract(c, s))] for s in steps]
                out[:, i, j, k] = [x[i, j, k], window(1).mean(), window(2).mean(), window(3).mean(),
                                   window(1).max(), window(1).min(),
                                   np.sqrt(sum(((p - m) / 2) ** 2 for p, m in zip(plus, minus))),
                                   sum(plus) + sum(minus) - 6 * x[i, j, k]]
    return out


def test_oracle_features_against_a_per_cell_loop(module):
    generator = torch.Generator().manual_seed(0)
    occupancy = (torch.rand(2, 1, 5, 5, 5, generator=generator) > 0.4).float() * torch.rand(2, 1, 5, 5, 5,
                                                                                           generator=generator)
    volumes = module.oracle_features(occupancy)
    width = len(module.FEATURES)
    assert volumes.shape == (2, 2 * width + 1, 5, 5, 5)
    for o in range(2):
        np.testing.assert_allclose(volumes[o, :width].numpy(), _naive_features(occupancy[o, 0].numpy()), atol=1e-6)
    feats, beta = volumes[:, :width], volumes[:, width:2 * width]
    norms = beta.norm(dim=1)
    assert torch.allclose(norms[feats.norm(dim=1) > 1e-3], torch.tensor(1.0), atol=1e-5)  # unit length per cell
    assert torch.allclose(beta * feats.norm(dim=1, keepdim=True), feats, atol=1e-5)
    assert torch.equal(volumes[:, -1:], occupancy)  # the opacity is the occupancy
    # a half-turn of the volume turns every feature map with it (the matcher's augmentation)
    assert torch.allclose(module.oracle_features(occupancy.flip(2, 3)), volumes.flip(2, 3), atol=1e-6)
    with pytest.raises(ValueError, match="occupancy must be"):
        module.oracle_features(occupancy[:, 0])


def test_scene_files_are_checked(module, tmp_path):
    settings = {"fine": 0.005, "sources": ["solid"], "voxel_sizes": [0.02], "roi_sizes": [8], "image_sizes": []}
    path = tmp_path / "parts_0001.npz"
    assert module.read_scene_volumes(path, settings) is None  # missing: to be built
    np.savez(path, **{"volume/solid/0.02/8": np.zeros((2, 1, 8, 8, 8), dtype=np.float32)},
             labels=np.zeros(2, dtype=np.int64), types=np.array(["normal", "normal"]),
             settings=np.array(json.dumps({"fine": 0.005}, sort_keys=True)))
    assert module.read_scene_volumes(path, settings)["labels"].shape == (2,)
    assert module.read_scene_volumes(path, {**settings, "fine": 0.01}) is None  # another scene lattice: rebuilt
    assert module.read_scene_volumes(path, {**settings, "voxel_sizes": [0.01]}) is None  # a setting it lacks
    np.savez(path, labels=np.zeros(2, dtype=np.int64), settings=np.array("{}"))
    with pytest.raises(ValueError, match=r"parts_0001\.npz: field 'types' is missing"):
        module.read_scene_volumes(path, settings)
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)  # a pickled array: never loaded
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match=r"parts_0001\.npz: not a readable oracle-volume file"):
        module.read_scene_volumes(path, settings)


def files_named(files, suffix: str) -> Path:
    """The one path of ``files`` whose name ends with ``suffix``."""
    (path,) = [p for p in files if p.name.endswith(suffix)]
    return path


def _toy_records(count: int, seed: int) -> list[dict]:
    """Scenes of 4 blocks of occupancy (4^3 cells), one of them (the anomaly) missing its top half."""
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(count):
        volumes = np.zeros((4, 1, 4, 4, 4), dtype=np.float32)
        volumes[:, :, :, :, 0:4] = 1.0
        odd = int(rng.integers(4))
        volumes[odd, :, :, :, 2:] = 0.0
        volumes += rng.uniform(0, 0.1, volumes.shape).astype(np.float32) * (volumes > 0)
        labels = np.zeros(4, dtype=np.int64)
        labels[odd] = 1
        records.append({"volume/toy": volumes, "labels": labels,
                        "types": np.array(["frac" if l else "normal" for l in labels])})
    return records


def test_trained_matcher_learns_a_plain_difference_and_reloads(module, tmp_path):
    from train_partsad import Config

    train, test = _toy_records(16, 0), _toy_records(6, 1)
    training = {"steps": 30, "batch": 4, "lr": 1e-3, "seed": 0}
    settings = {"roi_sizes": [4]}
    path = tmp_path / "toy_full.pt"
    detector, loss = module.trained_matcher(path, "full", "toy", train, settings, training, Config())
    scores = [module.scene_scores(detector, r["volume/toy"]) for r in test]
    report = module.score_report(test, [f"s{i}" for i in range(6)], scores, views=5)
    assert report["object_AUROC"] == 1.0 and loss < 0.3
    stamp = path.stat().st_mtime_ns
    again, again_loss = module.trained_matcher(path, "full", "toy", train, settings, training, Config())
    assert path.stat().st_mtime_ns == stamp and again_loss == loss  # loaded, not retrained
    assert [module.scene_scores(again, r["volume/toy"]) for r in test] == scores


def test_fitted_distance_is_a_logistic_regression_of_the_distance_columns(module):
    """distance_fit: its stored weights and bias give its test scores from columns computed here by hand
    (log1p of the median distance per channel group, standardised per scene); one-class training gives None."""
    from sklearn.linear_model import LogisticRegression
    from train_partsad import Config

    from oddsparse.eval.baselines import distance_to_others

    rng = np.random.default_rng(0)
    train, test = _toy_records(12, 0), _toy_records(4, 1)
    for r in train + test:  # graded anomalies, so that the three columns differ
        r["volume/toy"] = r["volume/toy"] * rng.uniform(0.5, 1.0, (4, 1, 1, 1, 1)).astype(np.float32)
    detector = module.build_detector("full", 4, Config())

    def by_hand(volumes):
        features = module.oracle_features(torch.from_numpy(volumes)).double()
        zero = torch.zeros(4, dtype=torch.int64)
        groups = [features[:, -1:], features[:, :8], features[:, 8:-1]]  # opacity, F_v (8), beta (8)
        raw = np.stack([np.log1p(distance_to_others(g, zero).numpy()) for g in groups], axis=1)
        return (raw - raw.mean(0)) / (raw.std(0) + 1e-6)

    scores, fit = module.fitted_distance(detector, train, test, "toy")
    weights = np.array([fit["weights"][g] for g in ("opacity", "F_v", "beta")])
    for record, got in zip(test, scores):
        np.testing.assert_allclose(got, by_hand(record["volume/toy"]) @ weights + fit["bias"], atol=1e-5)
    expected = LogisticRegression().fit(np.concatenate([by_hand(r["volume/toy"]) for r in train]),
                                        np.concatenate([r["labels"] for r in train]))
    np.testing.assert_allclose(weights, expected.coef_[0], rtol=1e-3, atol=1e-4)
    normal = [dict(r, labels=np.zeros(4, dtype=np.int64)) for r in train]
    assert module.fitted_distance(detector, normal, test, "toy") == (None, None)


def test_report_oracle_matcher_end_to_end_and_resumable(module, tmp_path):
    from sklearn.metrics import roc_auc_score

    def argv(steps="2"):
        return ["--family", "parts", "--scenes", "12", "--train-limit", "2", "--test-limit", "2", "--objects", "3", "3",
                "--stored-views", "4", "--render-size", "64", "--views", "2", "--fine", "0.01", "--voxel-sizes",
                "0.02", "--roi-size", "4", "--image-sizes", "32", "--variants", "A", "full", "--steps", steps,
                "--batch", "2", "--out", str(tmp_path)]

    report = module.main(argv())
    assert report["num_train_scenes"] == 2 and report["num_test_scenes"] == 2
    assert set(report["results"]) == {"solid/0.02/4", "hull@32/0.02/4"}
    assert set(report["results"]["solid/0.02/4"]) == {"distance", "distance_fit", "A", "full"}
    from oddsparse.eval.compare import bootstrap_object_auroc

    column = report["results"]["solid/0.02/4"]
    for scorer, reference in [("A", "distance"), ("full", "distance"), ("distance_fit", "distance"),
                              ("A", "distance_fit"), ("full", "distance_fit")]:  # each scorer minus its reference
        key = "minus_distance_95" if reference == "distance" else "minus_distance_fit_95"
        want = bootstrap_object_auroc(column[scorer], column[reference])[1]
        assert column[scorer][key] == pytest.approx(list(want)), (scorer, reference)
    assert any(column[s]["minus_distance_95"] != pytest.approx([-v for v in column[s]["minus_distance_95"][::-1]])
               for s in ("A", "full", "distance_fit"))  # not symmetric about 0: the order of subtraction shows
    assert (tmp_path / "oracle_matcher.png").stat().st_size > 0
    assert json.loads((tmp_path / "oracle_matcher.json").read_text())["results"] == report["results"]
    # the distance column is report_resolution's scorer on the same rebuilt scenes; a scene's AUROC is sklearn's
    rr = load_recipe("report_resolution")
    settings = {k: report[k] for k in ("family", "scenes", "seed", "objects", "stored_views", "render_size", "views",
                                       "fine", "voxel_sizes", "roi_sizes", "image_sizes", "sources",
                                       "depth_tolerance_px")}
    for row in report["results"]["solid/0.02/4"]["distance"]["per_scene"]:
        spec = rr.scene_spec(row["name"], settings)
        scores = rr.scene_scores(spec, settings)["solid/0.02/4"]
        labels = [o.is_anomalous for o in spec.objects]
        expected = roc_auc_score(labels, scores) if 0 < sum(labels) < len(labels) else None
        assert row["object_AUROC"] == pytest.approx(expected) if expected is not None else row["object_AUROC"] is None
    scene_file = next((tmp_path / "volumes").iterdir())
    files = {p: p.stat().st_mtime_ns for p in [*(tmp_path / "matchers").iterdir(), scene_file]}
    assert len(files) == 5  # 2 settings x 2 variants, and a scene
    again = module.main(argv())
    assert {p: p.stat().st_mtime_ns for p in files} == files  # volumes and matchers reused
    assert again["results"] == report["results"]
    fewer = module.main(argv() + ["--sources", "solid"])  # a subset of the settings: nothing rebuilt or retrained
    assert {p: p.stat().st_mtime_ns for p in files} == files
    assert fewer["results"] == {"solid/0.02/4": report["results"]["solid/0.02/4"]}
    assert set(np.load(scene_file, allow_pickle=False).files) >= {"volume/solid/0.02/4", "volume/hull@32/0.02/4"}
    module.main(argv(steps="3"))  # other training: trained beside the first ones, which are kept as they were
    assert {p: p.stat().st_mtime_ns for p in files} == files
    assert len(list((tmp_path / "matchers").iterdir())) == 8
    assert sorted(p.name for p in (tmp_path / "matchers").glob("solid_0.02_4_full_*")) == [
        f"solid_0.02_4_full_{steps}x2_lr{report['training']['lr']:g}_seed{report['seed']}_train2.pt" for steps in (2, 3)]
    assert report["training"]["train_limit"] == 2
    more = module.main(argv() + ["--train-limit", "3", "--variants", "full", "--sources", "solid"])  # other scenes:
    assert {p: p.stat().st_mtime_ns for p in files} == files  # trained beside, not read from the 2-scene matchers
    assert more["num_train_scenes"] == 3
    assert (tmp_path / "matchers" / f"solid_0.02_4_full_2x2_lr{report['training']['lr']:g}_seed0_train3.pt").is_file()
    # a file whose stamp says it was trained otherwise (e.g. on other scenes) is retrained, the others are not
    stale = next(p for p in files if p.name.startswith("solid_0.02_4_A_2x2"))
    saved = torch.load(stale, weights_only=True)
    stamp = json.loads(saved["stamp"])
    stamp["settings"]["scenes"] += 1
    torch.save(dict(saved, stamp=json.dumps(stamp, sort_keys=True)), stale)
    files[stale] = stale.stat().st_mtime_ns
    module.main(argv())
    assert [p for p in files if p.stat().st_mtime_ns != files[p]] == [stale]
    assert json.loads(torch.load(stale, weights_only=True)["stamp"])["settings"]["scenes"] == report["scenes"]
    # tokens of 2^3 cells: matchers of 2^3 tokens trained beside, named and stamped with the patch
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "matchers").iterdir()}
    patched = module.main(argv() + ["--token-patch", "2", "--variants", "full", "--sources", "solid"])
    assert {p: p.stat().st_mtime_ns for p in files} == files
    assert patched["training"]["token_patch"] == 2
    assert patched["results"]["solid/0.02/4"]["distance"] == report["results"]["solid/0.02/4"]["distance"]
    new = sorted(set((tmp_path / "matchers").iterdir()) - set(files))
    assert [p.name for p in new] == [f"solid_0.02_4_full_2x2_lr{report['training']['lr']:g}_seed{report['seed']}_patch2_train2.pt"]
    assert torch.load(new[0], weights_only=True)["matcher"]["cell_embedding.weight"].shape[0] == 2 ** 3
    # a matcher anchored on the distance inputs: trained beside, named and stamped, holding its anchor
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "matchers").iterdir()}
    anchored = module.main(argv() + ["--anchor", "--variants", "full", "--sources", "solid"])
    assert {p: p.stat().st_mtime_ns for p in files} == files and anchored["training"]["anchor"] is True
    new = sorted(set((tmp_path / "matchers").iterdir()) - set(files))
    assert [p.name for p in new] == [f"solid_0.02_4_full_2x2_lr{report['training']['lr']:g}_seed{report['seed']}_anchor_train2.pt"]
    assert torch.load(new[0], weights_only=True)["matcher"]["anchor.weight"].shape == (1, 3)
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "matchers").iterdir()}
    module.main(argv() + ["--difference-input", "--variants", "full", "--sources", "solid"])
    new = sorted(set((tmp_path / "matchers").iterdir()) - set(files))
    assert [p.name for p in new] == [f"solid_0.02_4_full_2x2_lr{report['training']['lr']:g}_seed{report['seed']}_difference_train2.pt"]
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "matchers").iterdir()}
    module.main(argv() + ["--no-distance-input", "--variants", "full", "--sources", "solid"])
    new = sorted(set((tmp_path / "matchers").iterdir()) - set(files))
    assert [p.name for p in new] == [f"solid_0.02_4_full_2x2_lr{report['training']['lr']:g}_seed{report['seed']}_nodistance_train2.pt"]
    assert "anchor.weight" not in torch.load(new[0], weights_only=True)["matcher"]
    assert torch.load(new[0], weights_only=True)["matcher"]["head.mlp.0.weight"].shape[1] == \
        torch.load(files_named(files, "_difference_train2.pt"), weights_only=True)["matcher"]["head.mlp.0.weight"].shape[1] - 3
    with pytest.raises(SystemExit):
        module.main(argv() + ["--no-distance-input", "--anchor"])
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "matchers").iterdir()}
    module.main(argv() + ["--no-distance-input", "--difference-messages", "--variants", "full", "--sources", "solid"])
    new = sorted(set((tmp_path / "matchers").iterdir()) - set(files))
    assert [p.name for p in new] == [f"solid_0.02_4_full_2x2_lr{report['training']['lr']:g}_seed{report['seed']}"
                                     "_nodistance_diffmessages_train2.pt"]
    with pytest.raises(SystemExit):
        module.main(argv() + ["--token-patch", "3"])
    with pytest.raises(SystemExit):
        module.main(argv() + ["--roi-size", "3"])
