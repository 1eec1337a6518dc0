"""Smoke tests of the training recipes and the engine: checkpoints, loss decrease, exact resume, DDP.

The PartsAD smoke run generates 4 tiny scenes into a session cache that the other tests reuse.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from oddsparse.data import SceneDataset
from oddsparse.models.detector import build_detector, load_detector
from oddsparse.train import engine
from oddsparse.utils.checkpoint import load_checkpoint, save_checkpoint
from recipe_loader import load_recipe

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("oddsparse-cache")
    old = os.environ.get("ODDSPARSE_CACHE")
    os.environ["ODDSPARSE_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("ODDSPARSE_CACHE", None)
    else:
        os.environ["ODDSPARSE_CACHE"] = old


@pytest.fixture(scope="module")
def parts_smoke(cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke-parts")
    result = load_recipe("train_partsad").main(["--preset", "smoke", "--out", str(out)])
    return out, result


def _check_run_folder(out: Path, family: str, result: dict) -> None:
    for name in ("config.json", "stage0.pt", "stage1.pt", "box_head.pt", "stage2.pt", "final.pt"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["stage1_steps"] == 3 and config["stage2_steps"] == 2
    stage2 = load_checkpoint(out / "stage2.pt")
    assert stage2["stage"] == 2 and stage2["step"] == 2 and stage2["family"] == family
    assert json.loads(json.dumps(stage2["config"])) == config and "optimizer" in stage2 and "rng" in stage2
    assert load_checkpoint(out / "stage1.pt")["step"] == 3 and load_checkpoint(out / "stage0.pt")["step"] == 2
    detector, checkpoint = load_detector(out / "final.pt")
    assert checkpoint["config"]["variant"] == "full" and not detector.training
    assert detector.box_head is not None and load_checkpoint(out / "box_head.pt")["stage"] == "1b"
    assert load_checkpoint(out / "box_head_refresh.pt")["stage"] == "2b"
    # final.pt holds the trained stage-2 weights, which differ from the stage-1 ones
    stage1_state, final_state = load_checkpoint(out / "stage1.pt")["model"], checkpoint["model"]
    assert any(not torch.equal(stage1_state[k], final_state[k]) for k in final_state)
    assert len(result["stage1"]["losses"]) == 3 and len(result["stage2"]["losses"]) == 2
    assert all(torch.isfinite(torch.tensor(result["stage1"]["losses"] + result["stage2"]["losses"])))
    assert list((out / "tb").iterdir()), "no TensorBoard events written"
    # the full variant distils: a teacher, its PCA, and a feature term in stage 1's loss
    assert load_checkpoint(out / "stage1.pt")["teacher"]["kind"] == "sift" and (out / "teacher_pca.npz").is_file()
    assert "feature" in result["stage1"]["terms"]
    # stage 2 trains the matcher end to end, from where the warm-up (2a) left it
    warmup, stage2_state = load_checkpoint(out / "matcher_warmup.pt")["model"], stage2["model"]
    matcher_keys = [k for k in stage2_state if k.startswith("matcher.") and stage2_state[k].is_floating_point()]
    assert matcher_keys and any(not torch.equal(warmup[k], stage2_state[k]) for k in matcher_keys)


def test_partsad_smoke_writes_checkpoints(parts_smoke):
    out, result = parts_smoke
    _check_run_folder(out, "parts", result)


def test_toysad_smoke_writes_checkpoints_on_the_dense_backbone_without_spconv(cache_dir, tmp_path):
    """The toys recipe with ``--backbone dense`` in a process where spconv and cumm cannot be imported (a machine
    without them, e.g. a GPU whose CUDA has no spconv wheel); the PartsAD smoke run covers the sparse backbone."""
    code = ("import json, sys; sys.modules.update(dict.fromkeys(['spconv', 'spconv.pytorch', 'cumm'])); "
            f"sys.path.insert(0, {str(REPO / 'recipes')!r}); import train_toysad; "
            f"r = train_toysad.main(['--preset', 'smoke', '--backbone', 'dense', '--out', {str(tmp_path)!r}]); "
            "print('RESULT', json.dumps({s: {'losses': r[s]['losses'], 'terms': sorted(r[s]['terms'])} "
            "for s in ('stage1', 'stage2')}))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))[7:])
    _check_run_folder(tmp_path, "toys", result)
    assert json.loads((tmp_path / "config.json").read_text())["backbone"] == "dense"
    detector, _ = load_detector(tmp_path / "final.pt")
    assert type(detector.scene_model.backbone).__name__ == "DenseUNet3d"


def test_start_over_clears_the_runs_checkpoints_and_tensorboard_events_only(tmp_path):
    recipe = load_recipe("train_partsad")
    out = tmp_path / "run"
    for name in (*recipe.RUN_CHECKPOINTS, "teacher_pca.npz", "config.json", "tb/events.out.tfevents.1",
                 "teacher_cache/feature.npz", "eval/report.json"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"x")
    recipe.start_over(out)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == \
        ["config.json", "eval/report.json", "teacher_cache/feature.npz"]
    recipe.start_over(out)  # nothing left to clear


def test_recipe_cli_from_dataclass():
    recipe = load_recipe("train_partsad")
    cfg = recipe.parse_config(["--preset", "smoke", "--lr", "0.5", "--no-resume", "--backbone_channels", "4,8,16,32",
                               "--variant", "B"])
    assert cfg.lr == 0.5 and cfg.resume is False and cfg.backbone_channels == (4, 8, 16, 32) and cfg.variant == "B"
    assert cfg.stage1_steps == recipe.PRESETS["smoke"]["stage1_steps"]
    assert recipe.parse_config([]).stage1_steps == recipe.Config().stage1_steps
    with pytest.raises(SystemExit):
        recipe.parse_config(["--variant", "D"])
    for wrong in (["--target_views", "0"], ["--checkpoint_every", "-1"],  # refused before any training
                  ["--lambda_box", "1", "--no-box_head"]):
        with pytest.raises(SystemExit):
            recipe.parse_config(["--preset", "smoke", *wrong])
    assert recipe.parse_config(["--preset", "smoke", "--checkpoint_every", "0"]).checkpoint_every == 0


def test_synthetic_root_names_the_perceptibility_check_only_where_it_is_set(monkeypatch, tmp_path):
    recipe = load_recipe("train_partsad")
    monkeypatch.setenv("ODDSPARSE_CACHE", str(tmp_path))
    default = recipe.synthetic_root(recipe.parse_config([]), "parts")
    checked = recipe.synthetic_root(recipe.parse_config(["--synthetic_min_anomaly_pixels", "16"]), "parts")
    assert default.name == f"parts-128px-1200-seed0-o3-6-v12-g{recipe.GENERATOR_VERSION}"  # the cache of earlier runs
    assert checked.name == f"parts-128px-1200-seed0-o3-6-v12-p16-g{recipe.GENERATOR_VERSION}"


def test_data_seed_fixes_the_synthetic_scenes_while_seed_varies_the_training(monkeypatch, tmp_path):
    recipe = load_recipe("train_partsad")
    monkeypatch.setenv("ODDSPARSE_CACHE", str(tmp_path))
    name = lambda *argv: recipe.synthetic_root(recipe.parse_config(list(argv)), "parts").name  # noqa: E731
    assert name("--seed", "1").startswith("parts-128px-1200-seed1-")  # by default the data follows --seed
    assert name("--seed", "1", "--data_seed", "0") == name()  # the default run's scenes, another training
    assert name("--data_seed", "2").startswith("parts-128px-1200-seed2-")


def test_fine_preset_is_the_default_at_1_cm_over_the_same_volume():
    """The fine preset halves the voxel over the default's scene volume and doubles its images; the carving
    grid's centre, the density per voxel and the run folder follow."""
    recipe = load_recipe("train_partsad")
    default, fine = recipe.parse_config([]), recipe.parse_config(["--preset", "fine"])
    assert fine.voxel_size == default.voxel_size / 2 == 0.01
    assert [n * fine.voxel_size for n in fine.grid_shape] == pytest.approx(
        [n * default.voxel_size for n in default.grid_shape])  # 2.56 m x 2.56 m x 0.64 m (toys: up to 0.38 m tall)
    grid_fine, grid_default = (recipe.model_kwargs(c)[0]["grid"] for c in (fine, default))
    assert grid_fine["origin"] == pytest.approx(grid_default["origin"])
    assert fine.density_scale * fine.voxel_size == pytest.approx(default.density_scale * default.voxel_size)
    assert fine.image_size == fine.synthetic_size == 2 * default.image_size and fine.image_size % fine.render_size == 0
    assert fine.out == "runs/{dataset}-fine" and fine.stage1_steps == default.stage1_steps


def test_roi_size_and_token_patch_reach_the_detector():
    """--roi_size 16 --token_patch 2: object volumes of 16^3 cells, a matcher of 8^3 tokens of 8 cells each."""
    recipe = load_recipe("train_partsad")
    cfg = recipe.parse_config(["--preset", "smoke", "--roi_size", "16", "--token_patch", "2"])
    scene_kwargs, detector_kwargs = recipe.model_kwargs(cfg)
    assert detector_kwargs["roi_size"] == 16 and detector_kwargs["token_patch"] == 2
    detector = build_detector(scene_kwargs, detector_kwargs)
    plain = build_detector(*recipe.model_kwargs(recipe.parse_config(["--preset", "smoke"])))
    assert detector.roi_size == 16 and detector.matcher.resolution == 8 == plain.matcher.resolution
    assert detector.matcher.input.in_features == 8 * plain.matcher.input.in_features
    assert detector.matcher.beta_channels == 8 * plain.matcher.beta_channels


def test_encoder_norm_reaches_the_encoder_and_older_checkpoints_keep_batch_norm():
    recipe = load_recipe("train_partsad")
    scene_kwargs, detector_kwargs = recipe.model_kwargs(recipe.parse_config(["--preset", "smoke", "--encoder_norm",
                                                                             "group"]))
    assert scene_kwargs["encoder_norm"] == "group"
    encoder = build_detector(scene_kwargs, detector_kwargs).scene_model.encoder
    assert encoder.norm == "group" and any(isinstance(m, torch.nn.GroupNorm) for m in encoder.modules())
    older = {k: v for k, v in scene_kwargs.items() if k != "encoder_norm"}  # checkpoints written before the field
    encoder = build_detector(older, detector_kwargs).scene_model.encoder
    assert encoder.norm == "batch" and any(isinstance(m, torch.nn.BatchNorm2d) for m in encoder.modules())


def test_presets_pick_the_encoder_norm_and_pretrained_weights_need_batch_statistics():
    recipe = load_recipe("train_partsad")
    assert recipe.parse_config([]).encoder_norm == "group" and recipe.parse_config([]).foreground_steps == 3000
    assert recipe.parse_config(["--preset", "full"]).encoder_norm == "batch"  # the paper's ImageNet BatchNorm
    with pytest.raises(SystemExit):
        recipe.parse_config(["--pretrained_backbone_path", "resnet18.pt"])
    config = recipe.parse_config(["--pretrained_backbone_path", "resnet18.pt", "--encoder_norm", "frozen"])
    assert config.encoder_norm == "frozen"


def test_resume_refuses_a_run_folder_whose_weights_have_another_layout(tmp_path):
    recipe = load_recipe("train_partsad")
    scene_kwargs = recipe.model_kwargs(recipe.parse_config(["--preset", "smoke"]))[0]
    assert scene_kwargs["encoder_norm"] == "group"
    older = {k: v for k, v in scene_kwargs.items() if k != "encoder_norm"}  # written before the field: batch norm
    save_checkpoint(tmp_path / "stage1.pt", {"scene_kwargs": older, "config": {"foreground_steps": 1500}, "model": {}})
    message = (r"stage1\.pt: field 'scene_kwargs' was trained with encoder_norm='batch', but this run asks for "
               r"encoder_norm='group' .*resume it with `--encoder_norm batch --foreground_steps 1500`")
    with pytest.raises(SystemExit, match=message):
        recipe.main(["--preset", "smoke", "--out", str(tmp_path)])  # before any data is generated or loaded
    batch = recipe.model_kwargs(recipe.parse_config(["--preset", "smoke", "--encoder_norm", "batch"]))[0]
    recipe.check_run_folder(tmp_path, batch, 1500)  # the options it names resume it
    # the latest checkpoint is the one read; a width differs: named with the option that matches it
    save_checkpoint(tmp_path / "stage2.pt", {"scene_kwargs": dict(batch, backbone_channels=[4, 8, 16, 32])})
    with pytest.raises(SystemExit, match=r"stage2\.pt: .*backbone_channels=\[4, 8, 16, 32\].*"
                                         r"`--backbone_channels 4,8,16,32`, or start over"):
        recipe.check_run_folder(tmp_path, batch, 1500)
    save_checkpoint(tmp_path / "final.pt", {"model": {}})
    with pytest.raises(SystemExit, match=r"final\.pt: field 'scene_kwargs' missing"):
        recipe.check_run_folder(tmp_path, batch)


def test_resume_refuses_a_run_folder_whose_detector_has_another_layout(tmp_path):
    """The detector's own layout (box head, matcher) is checked the same way, up front: each field of
    DETECTOR_LAYOUT_FIELDS changes the shapes of the state dict, and the options named resume the folder."""
    recipe = load_recipe("train_partsad")
    scene_kwargs, detector_kwargs = recipe.model_kwargs(recipe.parse_config(["--preset", "smoke"]))
    small_scene = {"grid": {"shape": [16, 16, 8], "voxel_size": 0.05, "origin": [-0.4, -0.4, 0.0]},
                   "feature_channels": 8, "backbone_channels": [8, 8, 16, 16], "feature_dim": 16}
    small = dict(detector_kwargs, dim=16, roi_size=4, box_head_resolution=4)

    def shapes(kwargs):
        return {k: tuple(v.shape) for k, v in build_detector(small_scene, kwargs).state_dict().items()}

    changed = {"variant": "A", "dim": 32, "blocks": 2, "roi_size": 8, "token_patch": 2, "box_head": False,
               "box_head_resolution": 8, "box_head_inputs": "geometry", "box_head_size_input": True,
               "matcher_distance_input": False, "matcher_distance_anchor": True, "matcher_difference_input": True,
               "token_features": "all", "view_colour": True}
    assert set(changed) == set(recipe.DETECTOR_LAYOUT_FIELDS)
    for field, value in changed.items():  # each listed field changes the layout of the weights
        other = dict(small, **{field: value})
        if field == "variant":
            other["matcher_distance_input"] = False  # A compares nothing
        assert shapes(other) != shapes(small), field
    stored = {k: v for k, v in detector_kwargs.items() if k != "box_head_size_input"}  # written before the field
    save_checkpoint(tmp_path / "box_head.pt", {"scene_kwargs": scene_kwargs, "detector_kwargs": stored, "model": {}})
    recipe.check_run_folder(tmp_path, scene_kwargs, None, detector_kwargs)  # missing: the default, False
    message = (r"box_head\.pt: field 'detector_kwargs' was trained with box_head_size_input=False, but this run asks "
               r"for box_head_size_input=True; resume it with `--no-box_head_size_input`")
    with pytest.raises(SystemExit, match=message):
        recipe.main(["--preset", "smoke", "--out", str(tmp_path), "--box_head_size_input"])  # before any data
    save_checkpoint(tmp_path / "stage2.pt", {"scene_kwargs": scene_kwargs, "model": {},
                                             "detector_kwargs": dict(detector_kwargs, dim=48, variant="B")})
    with pytest.raises(SystemExit, match=r"stage2\.pt: .*variant='B', dim=48.*`--variant B --matcher_dim 48`"):
        recipe.check_run_folder(tmp_path, scene_kwargs, None, detector_kwargs)
    recipe.check_run_folder(tmp_path, scene_kwargs, None, dict(detector_kwargs, dim=48, variant="B", k=5))
    recipe.check_run_folder(tmp_path, scene_kwargs)  # no detector_kwargs given: the scene model alone


def _tiny_setup(data_root: Path, seed: int = 0):
    """A tiny detector initialised with ``seed`` (stage-1 objective) and the smoke training split (view seed 0)."""
    torch.manual_seed(seed)
    from oddsparse.geometry.grid import VoxelGrid

    grid = VoxelGrid.centered(shape=(48, 48, 16), voxel_size=0.04)
    scene_kwargs = dict(grid=dict(shape=list(grid.shape), voxel_size=grid.voxel_size, origin=list(grid.origin)),
                        feature_channels=8, backbone_channels=[8, 16, 32, 64])
    detector = build_detector(scene_kwargs, dict(dim=32, heads=2, blocks=1))
    objective = engine.Stage1Objective(detector.scene_model, render_size=(16, 16), feature_size=(16, 16),
                                       num_samples=16, use_distillation=False)
    dataset = SceneDataset(data_root, "train", num_input_views=2, num_target_views=1, image_size=64, seed=0)
    payload = dict(scene_kwargs=scene_kwargs, detector_kwargs=dict(dim=32, heads=2, blocks=1), config={})
    return detector, objective, dataset, payload


def test_stage1_loss_decreases(parts_smoke):
    """Overfitting one fixed batch for a few Adam steps lowers the stage-1 loss (mean of last 2 < first 2)."""
    data_root = Path(load_checkpoint(parts_smoke[0] / "final.pt")["data_root"])
    detector, objective, dataset, _ = _tiny_setup(data_root)
    batch = engine.prepare_batch(engine.load_batch(dataset, [0], [0]), "cpu")
    optimizer = torch.optim.Adam(detector.scene_model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss, terms = objective(batch, None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-2:]) / 2 < 0.8 * sum(losses[:2]) / 2, losses


def test_logged_object_feature_term_reads_the_masked_distance(parts_smoke):
    """``feature_object`` equals the feature term when every pixel is an object pixel, is 0 with none, and
    matches :func:`masked_feature_distance` of the rendered features on the batch's own masks."""
    import dataclasses

    from oddsparse.train.losses import masked_feature_distance

    data_root = Path(load_checkpoint(parts_smoke[0] / "final.pt")["data_root"])
    detector, _, dataset, _ = _tiny_setup(data_root)
    batch = engine.prepare_batch(engine.load_batch(dataset, [0, 1], [0, 0]), "cpu")
    model = detector.scene_model
    with torch.no_grad():
        output = model(batch.images, batch.K, batch.world_to_cam, carve_masks=batch.masks)
        rendered = model.render(output.fields, batch.target_K, batch.target_world_to_cam, batch.image_size, (8, 8),
                                num_samples=16, render_rgb=False)["features"]  # (B*T, d_f, 8, 8)
        teacher = torch.randn(rendered.shape, generator=torch.Generator().manual_seed(0))
        kwargs = dict(render_size=(16, 16), feature_size=(8, 8), num_samples=16)
        terms = {}
        for name, masks in (("own", batch.target_masks), ("all", torch.ones_like(batch.target_masks)),
                            ("none", torch.zeros_like(batch.target_masks))):
            terms[name] = engine.reconstruction_terms(model, output, dataclasses.replace(batch, target_masks=masks),
                                                      teacher, **kwargs)[1]
    assert "feature_object" in terms["own"] and float(terms["own"]["feature"]) > 0
    assert float(terms["all"]["feature_object"]) == pytest.approx(float(terms["all"]["feature"]), rel=1e-5)
    assert float(terms["none"]["feature_object"]) == 0.0
    on_object = torch.nn.functional.interpolate(batch.target_masks.flatten(0, 1)[:, None].float(), size=(8, 8),
                                                mode="area")[:, 0] >= 0.5
    expected = masked_feature_distance(rendered, teacher, on_object) / batch.batch_size
    assert float(terms["own"]["feature_object"]) == pytest.approx(float(expected), rel=1e-5)


def test_resume_equals_uninterrupted(parts_smoke, tmp_path):
    """2 steps in one go == 1 step, then a fresh model and RNG state resumed from the checkpoint, 1 more step
    (the loss draws a random factor, so the RNG state must come from the checkpoint too).
    A call on the finished stage runs no step and reports the stage's last loss from its checkpoint."""
    data_root = Path(load_checkpoint(parts_smoke[0] / "final.pt")["data_root"])
    results = {}

    class Drawing(torch.nn.Module):
        """The stage-1 objective with a random factor on its loss: a stage that draws random numbers (stage 2's
        box flips do), so a resume that does not restore the RNG state from the checkpoint reads other losses."""

        def __init__(self, objective):
            super().__init__()
            self.objective = objective

        def forward(self, batch, teacher_features):
            loss, terms = self.objective(batch, teacher_features)
            return loss * (1.0 + torch.rand(())), terms

    def run(run_dir: Path, stop_after, seed_init: int):
        detector, objective, dataset, payload = _tiny_setup(data_root, seed=seed_init)
        optimizer = torch.optim.Adam(detector.scene_model.parameters(), lr=1e-3)
        results[run_dir.name] = engine.train_stage(
            stage=1, objective=Drawing(objective), model=detector, optimizer=optimizer, dataset=dataset, steps=2, batch_size=1,
            seed=0, run_dir=run_dir, checkpoint_payload=payload, checkpoint_every=100, log_every=0,
            stop_after=stop_after, progress=False)
        return detector.state_dict()

    whole = run(tmp_path / "whole", None, seed_init=0)
    assert len(results["whole"]["losses"]) == 2 and results["whole"]["last_loss"] == results["whole"]["losses"][-1]
    run(tmp_path / "split", 1, seed_init=0)
    assert load_checkpoint(tmp_path / "split" / "stage1.pt")["step"] == 1
    torch.manual_seed(123)  # a different process state: everything must come from the checkpoint
    resumed = run(tmp_path / "split", None, seed_init=7)
    assert load_checkpoint(tmp_path / "split" / "stage1.pt")["step"] == 2
    assert len(results["split"]["losses"]) == 1
    assert results["split"]["last_loss"] == pytest.approx(results["whole"]["last_loss"], rel=1e-5)
    again = run(tmp_path / "split", None, seed_init=3)  # finished: no step now, the loss of its last one
    assert results["split"]["losses"] == [] and results["split"]["last_loss"] == load_checkpoint(
        tmp_path / "split" / "stage1.pt")["loss"]
    assert results["split"]["last_loss"] == pytest.approx(results["whole"]["last_loss"], rel=1e-5)
    assert all(torch.equal(again[key], resumed[key]) for key in resumed)
    for key, value in whole.items():
        if value.is_floating_point():
            torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-6, msg=key)
        else:
            assert torch.equal(resumed[key], value), key
    # and it really trained: the weights moved away from the initialisation
    initial = _tiny_setup(data_root, seed=0)[0].state_dict()
    assert any(not torch.allclose(initial[k], whole[k]) for k in whole if whole[k].is_floating_point())


def test_a_rerun_of_a_finished_run_keeps_the_reports_of_its_weights(cache_dir, tmp_path, monkeypatch, capsys):
    """The end-of-run evaluation records the fingerprint of the weights and its inputs; running the finished
    run again keeps both reports instead of evaluating again; a report of other weights is evaluated anew."""
    import oddsparse.eval.evaluate as evaluate

    recipe = load_recipe("train_partsad")
    out = tmp_path / "run"
    argv = ["--preset", "smoke", "--evaluate", "--out", str(out)]
    recipe.main(argv)
    done = [line for line in capsys.readouterr().out.splitlines() if line.startswith("done ")][-1]
    paths = [out / folder / "report.json" for folder, _ in recipe.REPORT_FOLDERS]
    first = [json.loads(path.read_text()) for path in paths]
    assert all(len(report["settings"]["fingerprint"]) == 40 for report in first)
    assert first[0]["settings"]["fingerprint"] != first[1]["settings"]["fingerprint"]  # predicted vs GT boxes
    real, calls = evaluate.evaluate_detector, []

    def counting(*args, **kwargs):
        calls.append(kwargs["boxes"])
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_detector", counting)
    capsys.readouterr()
    recipe.main(argv)
    printed = capsys.readouterr().out
    assert calls == [] and printed.count("kept ") == 2
    again = [line for line in printed.splitlines() if line.startswith("done ")][-1]
    losses = [re.search(rf"{key}=(\S+)", line).group(1) for line in (done, again) for key in ("stage1_loss", "stage2_loss")]
    assert losses[:2] == losses[2:] and "nan" not in losses  # the rerun trains nothing and reports the run's losses
    assert [json.loads(path.read_text()) for path in paths] == first
    stale = dict(first[1], settings=dict(first[1]["settings"], fingerprint="0" * 40))  # other weights
    paths[1].write_text(json.dumps(stale))
    recipe.main(argv)
    assert calls == ["gt"] and json.loads(paths[1].read_text())["settings"]["fingerprint"] == \
        first[1]["settings"]["fingerprint"]


def test_init_distributed_refuses_a_device_it_would_not_use():
    """'cuda:0' is neither 'cuda' nor 'auto': it used to train on the CPU without a word."""
    with pytest.raises(ValueError, match="'cuda:0'"):
        engine.init_distributed("cuda:0")
    assert engine.init_distributed("cpu").device == torch.device("cpu")


def test_prefetched_batches_are_the_ones_each_step_reads(parts_smoke, tmp_path):
    """A background thread reading ahead yields each step's own batch, in order; stopping early leaves no thread
    behind; a read error is raised at its batch; training with or without it gives the same weights."""
    data_root = Path(load_checkpoint(parts_smoke[0] / "final.pt")["data_root"])
    detector, objective, dataset, payload = _tiny_setup(data_root)

    def direct(step):
        return engine.load_batch(dataset, *engine.batch_indices(step, num_items=len(dataset), batch_size=2, seed=3))

    for prefetch in (0, 1, 3):
        batches = list(engine.training_batches(dataset, start=1, steps=6, batch_size=2, seed=3, prefetch=prefetch))
        assert len(batches) == 5
        for step, batch in enumerate(batches, start=1):
            expected = direct(step)
            assert torch.equal(batch["index"], expected["index"]), (prefetch, step)
            assert torch.equal(batch["inputs"].view_ids, expected["inputs"].view_ids)
            assert torch.equal(batch["inputs"].images, expected["inputs"].images)
            assert torch.equal(batch["targets"].masks, expected["targets"].masks)
    batches = engine.training_batches(dataset, start=0, steps=1000, batch_size=2, seed=3, prefetch=2)
    next(batches)
    batches.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("oddsparse-prefetch")]

    class Broken:
        def __len__(self):
            return len(dataset)

        def set_epoch(self, epoch):
            pass

        def __getitem__(self, index):
            raise OSError(f"scene {index} unreadable")

    with pytest.raises(OSError, match="unreadable"):
        next(engine.training_batches(Broken(), start=0, steps=3, batch_size=1, seed=0, prefetch=1))

    def train(prefetch: int, run_dir: Path):
        detector, objective, dataset, payload = _tiny_setup(data_root)
        optimizer = torch.optim.Adam(detector.scene_model.parameters(), lr=1e-3)
        result = engine.train_stage(stage=1, objective=objective, model=detector, optimizer=optimizer,
                                    dataset=dataset, steps=3, batch_size=1, seed=0, run_dir=run_dir,
                                    checkpoint_payload=payload, checkpoint_every=100, log_every=0, progress=False,
                                    prefetch=prefetch)
        return result["losses"], detector.state_dict()

    (losses0, state0), (losses2, state2) = train(0, tmp_path / "p0"), train(2, tmp_path / "p2")
    assert losses0 == losses2
    assert all(torch.equal(state0[k], state2[k]) for k in state0)


def test_batch_indices_partition_the_epoch():
    """Ranks draw disjoint samples; a global batch sequence covers each epoch exactly once."""
    seen = []
    for step in range(3):  # 3 steps x 2 ranks x 2 = 12 = one epoch of 12 items
        for rank in range(2):
            indices, epochs = engine.batch_indices(step, num_items=12, batch_size=2, seed=5, rank=rank, world_size=2)
            assert epochs == [0, 0]
            seen += indices
    assert sorted(seen) == list(range(12))
    assert engine.batch_indices(3, num_items=12, batch_size=2, seed=5, world_size=2)[1] == [1, 1]
    assert engine.batch_indices(1, num_items=12, batch_size=2, seed=5) == engine.batch_indices(
        1, num_items=12, batch_size=2, seed=5)


def test_ddp_two_processes_gloo(parts_smoke, cache_dir, tmp_path):
    """torchrun with 2 CPU processes (gloo) runs both stages and rank 0 writes the checkpoints."""
    out = tmp_path / "ddp"
    env = dict(os.environ, ODDSPARSE_CACHE=str(cache_dir), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "recipes" / "train_partsad.py"), "--preset", "smoke", "--out", str(out),
               "--stage1_steps", "2", "--stage2_steps", "1", "--threads", "1"]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    assert "done family=parts" in completed.stdout
    checkpoint = load_checkpoint(out / "stage2.pt")
    assert checkpoint["step"] == 1 and (out / "final.pt").is_file()


def test_cached_object_volumes_equal_the_direct_path_and_warmup_trains_the_matcher_only(parts_smoke):
    out, _ = parts_smoke
    detector, checkpoint = load_detector(out / "final.pt")
    detector.register_objects = True  # the cache then holds the registered boxes' volumes, as score_boxes reads them
    dataset = SceneDataset(checkpoint["data_root"], "train", family="parts", num_input_views=2, num_target_views=0,
                           image_size=tuple(checkpoint["image_size"]), seed=0)
    cache = engine.cache_object_volumes(detector, dataset, draws=2, progress=False)
    assert cache.num_groups == 2 * len(dataset) and cache.volumes.dtype == torch.float16
    first_only = engine.cache_object_volumes(detector, dataset, max_scenes=1, progress=False)
    assert first_only.num_groups == 1 and torch.equal(first_only.volumes, cache.volumes[cache.group == 0])
    # item 1 of draw 1 (group len + 1), computed directly: same volumes (to float16 rounding), same labels
    batch = engine.prepare_batch(engine.load_batch(dataset, [1], [1]), "cpu")
    with torch.no_grad():
        scene = detector.scene_model(batch.images, batch.K, batch.world_to_cam)
        gt = engine.canonical_boxes(batch.gt_boxes)
        direct = detector.object_volumes(scene, detector.register_boxes(scene, gt, batch.gt_scene), batch.gt_scene)
    volumes, labels, scene_index = cache.select([len(dataset) + 1])
    assert torch.allclose(volumes, direct, atol=2e-3, rtol=2e-3)
    assert torch.equal(labels, batch.gt_labels) and torch.equal(scene_index, torch.zeros_like(labels))
    # select packs several items in the given order, scene index 0, 1, ...
    volumes2, labels2, scene2 = cache.select([len(dataset) + 1, 0])
    first = int((cache.group == len(dataset) + 1).sum())
    assert torch.equal(volumes2[:first], volumes) and torch.equal(scene2[first:], torch.ones_like(scene2[first:]))
    # the warm-up moves the matcher and nothing else
    losses = _train_changes_only(detector, "matcher.", lambda: engine.train_matcher_on_cache(
        detector, cache, steps=3, batch_size=2, progress=False))
    assert len(losses) == 3


def test_view_colour_reaches_the_detector_and_the_cached_volumes_hold_the_views_colour(parts_smoke):
    """--view_colour: the recipe's detector reads the views' colour as a fourth distance input (and in its tokens
    with --token_features all), and the stage-2a cache (which runs the scene model itself) holds the same colour
    channels as the direct path."""
    recipe = load_recipe("train_partsad")
    scene_kwargs, detector_kwargs = recipe.model_kwargs(recipe.parse_config(["--preset", "smoke", "--view_colour"]))
    assert detector_kwargs["view_colour"]
    detector = build_detector(scene_kwargs, detector_kwargs).eval()
    assert detector.matcher.head.extra_features == 4 and detector.distance_groups[-1] == "colour"
    feature_dim = detector.scene_model.fields.feature_dim
    assert detector.matcher.input.in_features == 8  # the paper's tokens: F_v alone
    _, tokens_all = recipe.model_kwargs(recipe.parse_config(["--preset", "smoke", "--view_colour",
                                                             "--token_features", "all"]))
    assert build_detector(scene_kwargs, tokens_all).matcher.input.in_features == 8 + feature_dim + 4 + 1
    out, _ = parts_smoke
    trained, checkpoint = load_detector(out / "final.pt")
    detector.scene_model.load_state_dict(trained.scene_model.state_dict())
    dataset = SceneDataset(checkpoint["data_root"], "train", family="parts", num_input_views=2, num_target_views=0,
                           image_size=tuple(checkpoint["image_size"]), seed=0)
    cache = engine.cache_object_volumes(detector, dataset, max_scenes=1, progress=False)
    batch = engine.prepare_batch(engine.load_batch(dataset, [0], [0]), "cpu")
    with torch.no_grad():
        scene = detector.scene_model(batch.images, batch.K, batch.world_to_cam)
        direct = detector.object_volumes(scene, engine.canonical_boxes(batch.gt_boxes), batch.gt_scene)
    volumes, _, _ = cache.select([0])
    assert volumes.shape == direct.shape == (direct.shape[0], 8 + feature_dim + 4 + 1, *direct.shape[2:])
    colour = detector.volume_parts(volumes.float())["colour"]
    assert torch.allclose(colour, detector.volume_parts(direct)["colour"], atol=2e-3, rtol=2e-3)
    assert colour[:, 3].max() > 0.1  # some cell is seen


def test_matcher_warmup_adds_the_ranking_term_with_its_weight(parts_smoke, monkeypatch):
    """rank_weight w adds w x scene_ranking_loss(logits, labels, scene) of the step's own draw to its BCE: with a term
    that is constant 10 (no gradient) every step's loss is the plain run's plus 10 w, the training otherwise equal."""
    import copy

    out, _ = parts_smoke
    detector, checkpoint = load_detector(out / "final.pt")
    dataset = SceneDataset(checkpoint["data_root"], "train", family="parts", num_input_views=2, num_target_views=0,
                           image_size=tuple(checkpoint["image_size"]), seed=0)
    cache = engine.cache_object_volumes(detector, dataset, progress=False)
    seen = []

    def constant(logits, labels, scene):
        seen.append((logits.shape, set(labels.tolist()) <= {0, 1}, scene.shape))
        return logits.sum() * 0.0 + 10.0

    monkeypatch.setattr(engine, "scene_ranking_loss", constant)
    plain, ranked = copy.deepcopy(detector), copy.deepcopy(detector)
    losses = engine.train_matcher_on_cache(plain, cache, steps=3, batch_size=2, progress=False)
    assert not seen  # weight 0: the term is not computed
    weighted = engine.train_matcher_on_cache(ranked, cache, steps=3, batch_size=2, progress=False, rank_weight=0.5)
    assert weighted == pytest.approx([loss + 5.0 for loss in losses], abs=1e-5)
    assert len(seen) == 3 and all(ok and shape == scene for shape, ok, scene in seen)


def test_cached_predicted_box_volumes_label_by_matching_and_unmatched_boxes_carry_no_loss(parts_smoke, monkeypatch):
    """boxes='predicted': the detector's own boxes (here: set by hand), labelled by IoU matching, -1 unmatched."""
    from oddsparse.geometry.boxes import YawBoxes

    out, _ = parts_smoke
    detector, checkpoint = load_detector(out / "final.pt")
    dataset = SceneDataset(checkpoint["data_root"], "train", family="parts", num_input_views=2, num_target_views=0,
                           image_size=tuple(checkpoint["image_size"]), seed=0)
    batches = [engine.prepare_batch(engine.load_batch(dataset, [i], [0]), "cpu") for i in range(2)]
    gt0 = engine.canonical_boxes(batches[0].gt_boxes)
    far = YawBoxes(gt0.center[:1] + torch.tensor([[5.0, 5.0, 0.0]]), gt0.size[:1], gt0.yaw[:1])
    # scene 0: its GT boxes (all but the first) and a box far from every object; scene 1: only a far box
    found = iter([YawBoxes(*(torch.cat([a[1:], b]) for a, b in zip(gt0, far))), far])

    def find_boxes(scene):
        boxes = next(found)
        return boxes, torch.zeros(boxes.center.shape[0], dtype=torch.int64)

    monkeypatch.setattr(detector, "find_boxes", find_boxes)
    cache = engine.cache_object_volumes(detector, dataset, max_scenes=2, boxes="predicted", progress=False)
    volumes0, labels0, _ = cache.select([0])
    assert labels0.tolist() == batches[0].gt_labels[1:].tolist() + [-1]
    with torch.no_grad():
        scene = detector.scene_model(batches[0].images, batches[0].K, batches[0].world_to_cam)
        direct = detector.object_volumes(scene, YawBoxes(*(torch.cat([a[1:], b]) for a, b in zip(gt0, far))),
                                         torch.zeros(len(labels0), dtype=torch.int64))
    assert torch.allclose(volumes0, direct, atol=2e-3, rtol=2e-3)
    # no predicted box of scene 1 matches: its GT boxes are cached instead
    assert torch.equal(cache.select([1])[1], batches[1].gt_labels)
    # the warm-up loss is the BCE of the matched objects only (the unmatched one is still compared)
    volumes, labels, scene_index = cache.select([0, 1])
    detector.matcher.train()
    with torch.no_grad():
        logits, _ = detector.score_volumes(volumes, scene_index)
    used = labels >= 0
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[used], labels[used].float())
    order = torch.randperm(cache.num_groups, generator=torch.Generator().manual_seed(0)).tolist()
    assert sorted(order) == [0, 1]  # one step of batch 2 draws both items; the loss does not depend on their order
    losses = engine.train_matcher_on_cache(detector, cache, steps=1, batch_size=2, flip=False, progress=False)
    assert losses[0] == pytest.approx(float(expected), rel=1e-5, abs=1e-6)
    with pytest.raises(ValueError, match="boxes must be 'gt' or 'predicted'"):
        engine.cache_object_volumes(detector, dataset, boxes="estimated", progress=False)


def _train_changes_only(detector, prefix: str, train):
    """Run ``train()``; check that it changed some weights, all under ``prefix``, and returned finite losses."""
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    losses = train()
    assert all(torch.isfinite(torch.tensor(losses)))
    after = detector.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(prefix) for k in changed), changed
    return losses


def _proposal_cache(parts_smoke, **detector_kwargs):
    """A box-head detector on the smoke run's scene model (``detector_kwargs`` added), its training set,
    checkpoint and proposal cache."""
    out, _ = parts_smoke
    checkpoint = load_checkpoint(out / "final.pt")
    detector = build_detector(checkpoint["scene_kwargs"], dict(checkpoint["detector_kwargs"], box_head=True,
                                                               box_head_resolution=8, **detector_kwargs))
    detector.density_threshold = -1.0  # every carved voxel is an object voxel: the GT-mask hull gives proposals
    dataset = SceneDataset(checkpoint["data_root"], "train", family="parts", num_input_views=2, num_target_views=0,
                           image_size=tuple(checkpoint["image_size"]), seed=0)
    cache = engine.cache_proposals(detector, dataset, carve_from_gt=True, match_iou=0.1, progress=False)
    return detector, dataset, checkpoint, cache


def test_cached_proposals_match_the_direct_path_and_the_box_head_trains_alone(parts_smoke):
    detector, dataset, checkpoint, cache = _proposal_cache(parts_smoke)
    assert len(cache) > 0 and cache.volumes.shape[1:] == (checkpoint["scene_kwargs"]["backbone_channels"][0] + 2,
                                                         8, 8, 8)
    # scene 0 directly: the same proposals; matched ones carry a GT box with IoU > 0.1, the others themselves
    batch = engine.prepare_batch(engine.load_batch(dataset, [0], [0]), "cpu")
    with torch.no_grad():
        scene = detector.scene_model(batch.images, batch.K, batch.world_to_cam, carve_masks=batch.masks)
    boxes, _ = detector.propose_boxes(scene)
    rows = slice(0, boxes.center.shape[0])
    assert torch.allclose(cache.proposals[rows, :3], boxes.center) and torch.allclose(cache.proposals[rows, 6], boxes.yaw)
    assert (cache.scene[rows] == 0).all() and (cache.scene[boxes.center.shape[0]:] > 0).all()
    from oddsparse.geometry.boxes import YawBoxes, box_iou_3d

    own = YawBoxes(cache.proposals[rows, :3], cache.proposals[rows, 3:6], cache.proposals[rows, 6])
    target = YawBoxes(cache.targets[rows, :3], cache.targets[rows, 3:6], cache.targets[rows, 6])
    iou = box_iou_3d(own, target).diagonal().float()
    matched = cache.matched[rows]
    assert (iou[matched] > 0.1).all() and torch.allclose(iou[~matched], torch.ones_like(iou[~matched]), atol=1e-5)
    gt = engine.canonical_boxes(batch.gt_boxes)  # a matched target is one of the scene's GT boxes, canonical
    gt_rows = torch.cat([gt.center, gt.size, gt.yaw[:, None]], dim=1)
    assert all(torch.isclose(gt_rows, cache.targets[i], atol=1e-6).all(dim=1).any()
               for i in torch.nonzero(matched)[:, 0].tolist())
    # fragment targets: an unmatched proposal is matched where the fraction of it inside a GT box of its scene
    # (computed here pair by pair) reaches cover, to the GT box holding most of it (up to rounding: a tie may go
    # either way); the cover is the largest such fraction, so one is matched
    from oddsparse.geometry.boxes import box_intersection_3d

    boxes_of = engine._boxes_of
    inside = {}
    for p in torch.nonzero(~cache.matched)[:, 0].tolist():
        for g in torch.nonzero(cache.gt_scene == cache.scene[p])[:, 0].tolist():
            volume = box_intersection_3d(boxes_of(cache.proposals[p:p + 1]), boxes_of(cache.gt[g:g + 1]))[0, 0]
            inside[p, g] = float(volume / cache.proposals[p, 3:6].double().prod())
    fraction = {p: max(f for (q, _), f in inside.items() if q == p) for p, _ in inside}
    cover = max(fraction.values()) - 1e-6
    assert cover > 0.05  # some unmatched proposal overlaps a GT box
    covered = engine.cache_proposals(detector, dataset, carve_from_gt=True, match_iou=0.1, progress=False, cover=cover)
    assert torch.equal(covered.proposals, cache.proposals)
    fragments = [p for p, f in fraction.items() if f >= cover]
    expected = cache.matched.clone()
    expected[fragments] = True
    assert torch.equal(covered.matched, expected)
    assert torch.equal(covered.targets[cache.matched], cache.targets[cache.matched])
    for p in fragments:
        holders = [g for (q, g), f in inside.items() if q == p and f >= fraction[p] - 1e-6]
        assert any(torch.allclose(covered.targets[p], cache.gt[g], atol=1e-6) for g in holders)
    _, matched = engine.proposal_targets(boxes_of(cache.proposals), cache.scene, boxes_of(cache.gt), cache.gt_scene,
                                         match_iou=0.1, cover=cover)
    assert torch.equal(matched, covered.matched)
    losses = _train_changes_only(detector, "box_head.", lambda: engine.train_box_head_on_cache(
        detector, cache, steps=3, batch_size=4, progress=False))
    assert len(losses) == 3
    with pytest.raises(ValueError, match="no proposal"):
        empty = engine.ProposalCache(cache.volumes[:0], cache.proposals[:0], cache.targets[:0], cache.matched[:0])
        engine.train_box_head_on_cache(detector, empty, steps=1, progress=False)


def test_box_head_with_size_input_trains_on_the_cached_proposal_sizes(parts_smoke):
    """train_box_head_on_cache hands a size-input head the sizes of the proposals it draws (half-turned ones keep
    theirs), and box_head_cache_loss those of every cached proposal, in order."""
    detector, _, _, cache = _proposal_cache(parts_smoke, box_head_size_input=True)
    seen = []
    handle = detector.box_head.register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))
    engine.train_box_head_on_cache(detector, cache, steps=2, batch_size=3, progress=False)
    sizes = cache.proposals[:, 3:6].float()
    assert len(seen) == 2 and all(rows.shape == (3, 3) for rows in seen)
    assert all(torch.isclose(row, sizes, atol=1e-6).all(dim=1).any() for rows in seen for row in rows)
    seen.clear()
    engine.box_head_cache_loss(detector, cache, chunk=2)
    handle.remove()
    assert torch.equal(torch.cat(seen), sizes)


def test_final_boxes_from_cached_proposals_equal_find_boxes_and_recall_counts_like_eval(parts_smoke):
    detector, dataset, _, _ = _proposal_cache(parts_smoke)
    cache = engine.cache_proposals(detector, dataset, carve_from_gt=True, match_iou=0.1, dtype=torch.float32,
                                   progress=False)
    detector.eval()
    torch.manual_seed(0)  # a fresh head leaves proposals as they are (zero last layer): make it move them
    torch.nn.init.normal_(detector.box_head.mlp[-1].weight, std=0.05)
    with torch.no_grad():  # a threshold that keeps some proposals and drops others
        _, objectness = detector.box_head(cache.volumes)
    assert detector.box_head(cache.volumes)[0].abs().max() > 1e-3  # its deltas move the boxes
    middle = torch.sigmoid(objectness).sort().values[len(objectness) // 2 - 1:len(objectness) // 2 + 1]
    detector.objectness_threshold = float(middle.mean())  # between two proposals: no tie that rounding could flip
    detector.box_consensus = True
    from oddsparse.geometry.boxes import YawBoxes, match_boxes

    boxes, scene = engine.cached_final_boxes(detector, cache, chunk=3)
    matched = total = 0
    for index in range(len(dataset)):  # the direct path, scene by scene, against the GT boxes of the batch
        batch = engine.prepare_batch(engine.load_batch(dataset, [index], [0]), "cpu")
        with torch.no_grad():
            output = detector.scene_model(batch.images, batch.K, batch.world_to_cam, carve_masks=batch.masks)
            direct, _ = detector.find_boxes(output)
        own = YawBoxes(*(t[scene == index] for t in boxes))
        assert torch.allclose(own.center, direct.center, atol=1e-5) and torch.allclose(own.size, direct.size, atol=1e-5)
        assert torch.allclose(own.yaw, direct.yaw, atol=1e-5)
        b_of_gt, _ = match_boxes(batch.gt_boxes, direct, 0.5)
        matched, total = matched + int((b_of_gt >= 0).sum()), total + len(b_of_gt)
    assert 0 < scene.numel() < len(cache)  # some proposals dropped, some kept
    recall = engine.box_recall_on_cache(detector, cache)
    assert (recall["matched"], recall["num_gt"], recall["num_boxes"]) == (matched, total, scene.numel())
    # a split keeps each scene's GT boxes with its proposals
    kept, held = cache.split_scenes(0.5)
    assert set(held.gt_scene.tolist()) == set(held.scene.tolist()) and set(kept.gt_scene.tolist()) == set(kept.scene.tolist())
    assert len(kept.gt) + len(held.gt) == len(cache.gt)
    assert engine.box_recall_on_cache(detector, kept)["matched"] + engine.box_recall_on_cache(detector, held)["matched"] == matched
    with pytest.raises(ValueError, match="no GT boxes"):
        engine.box_recall_on_cache(detector, engine.ProposalCache(cache.volumes, cache.proposals, cache.targets,
                                                                  cache.matched, cache.scene))


def test_cached_final_boxes_and_recall_read_each_view_draw_alone_and_count_every_gt_box(parts_smoke, monkeypatch):
    """With two view draws per scene each draw is an item of its own, as find_boxes sees it (scene consensus does
    not pool the draws), and an item that got no proposal still counts its GT objects as missed, as eval does."""
    from oddsparse.geometry.boxes import YawBoxes, match_boxes

    detector, dataset, _, _ = _proposal_cache(parts_smoke, box_consensus=True)
    detector.eval()
    real, calls = detector.propose_boxes, []

    def propose(output):  # the first item (draw 0, scene 0) gets no proposal, directly and in the cache alike
        boxes, scene = real(output)
        calls.append(output)
        if len(calls) == 1 or none_anywhere:
            return YawBoxes(boxes.center[:0], boxes.size[:0], boxes.yaw[:0]), scene[:0]
        return boxes, scene

    none_anywhere = False
    monkeypatch.setattr(detector, "propose_boxes", propose)
    cache = engine.cache_proposals(detector, dataset, draws=2, carve_from_gt=True, match_iou=0.1, dtype=torch.float32,
                                   progress=False)
    boxes, item = engine.cached_final_boxes(detector, cache)
    calls.clear()
    matched = total = 0
    for draw in range(2):
        for index in range(len(dataset)):
            batch = engine.prepare_batch(engine.load_batch(dataset, [index], [draw]), "cpu")
            with torch.no_grad():
                output = detector.scene_model(batch.images, batch.K, batch.world_to_cam, carve_masks=batch.masks)
                direct, _ = detector.find_boxes(output)
            own = YawBoxes(*(t[item == draw * len(dataset) + index] for t in boxes))
            assert torch.allclose(own.center, direct.center, atol=1e-5) and torch.allclose(own.size, direct.size,
                                                                                            atol=1e-5)
            b_of_gt, _ = match_boxes(batch.gt_boxes, direct, 0.5)
            matched, total = matched + int((b_of_gt >= 0).sum()), total + len(b_of_gt)
    assert direct.center.shape[0] > 0 and not (item == 0).any()  # the first item has no box, the last ones do
    recall = engine.box_recall_on_cache(detector, cache)
    assert (recall["matched"], recall["num_gt"]) == (matched, total)
    kept, held = cache.split_scenes(0.5)  # the proposal-less item's GT boxes stay with its scene
    assert len(kept.gt) + len(held.gt) == len(cache.gt)
    assert sorted(set(kept.gt_scene.tolist()) | set(held.gt_scene.tolist())) == list(range(len(dataset)))
    none_anywhere = True  # no proposal anywhere: every GT box missed
    empty = engine.cache_proposals(detector, dataset, draws=2, carve_from_gt=True, dtype=torch.float32, progress=False)
    recall = engine.box_recall_on_cache(detector, empty)
    assert len(empty) == 0 and recall["num_gt"] == total and recall["matched"] == 0


@pytest.mark.parametrize("size_input", [False, True])
def test_stage2_box_head_term_is_the_cached_head_loss_and_reaches_the_head_only(parts_smoke, size_input):
    """``lambda_box``: stage 2 adds the box head's loss on the step's proposals, the loss a proposal cache of the
    same scene gives (:func:`box_head_cache_loss`); the matcher scores the same boxes, and the scene model's
    gradient is the one without the term (volumes detached) while the head gets one. The same with a head that
    reads the proposals' sizes (both paths hand it the same ones)."""
    detector, proposal_set, checkpoint, _ = _proposal_cache(parts_smoke, box_head_size_input=size_input)
    dataset = SceneDataset(proposal_set.root, "train", family="parts", num_input_views=2, num_target_views=1,
                           image_size=tuple(checkpoint["image_size"]), seed=0)  # stage 2 renders a target view
    torch.manual_seed(0)  # a head whose deltas move the boxes, so that its loss and gradient are not trivial
    torch.nn.init.normal_(detector.box_head.mlp[-1].weight, std=0.05)
    detector.objectness_threshold = 0.0
    batch = engine.prepare_batch(engine.load_batch(dataset, [0], [0]), "cpu")
    kwargs = dict(render_size=(16, 16), feature_size=(16, 16), num_samples=8, use_distillation=False,
                  carve_from_gt=True, flip_boxes=False, box_match_iou=0.1)
    runs = {}
    for weight in (0.0, 2.0):
        detector.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        loss, terms = engine.stage2_loss(detector, batch, None, lambda_box=weight, **kwargs)
        loss.backward()
        grads = {k: None if v.grad is None else v.grad.clone() for k, v in detector.named_parameters()}
        runs[weight] = loss.detach(), terms, grads
    (loss0, terms0, grads0), (loss2, terms2, grads2) = runs[0.0], runs[2.0]
    assert "box_head" not in terms0 and torch.equal(terms0["bce"], terms2["bce"])  # the same boxes scored
    cache = engine.cache_proposals(detector, dataset, carve_from_gt=True, match_iou=0.1, dtype=torch.float32,
                                   max_scenes=1, progress=False)
    assert len(cache) > 1 and cache.matched.any()
    expected = engine.box_head_cache_loss(detector, cache)
    assert float(terms2["box_head"]) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert float(loss2 - loss0) == pytest.approx(2.0 * expected, rel=1e-4, abs=1e-5)
    for name, grad in grads2.items():
        if name.startswith("box_head."):
            assert grads0[name] is None or not grads0[name].any()
        elif grads0[name] is not None:
            assert torch.allclose(grad, grads0[name], atol=1e-6), name
    assert any(g is not None and g.abs().sum() > 0 for k, g in grads2.items() if k.startswith("box_head."))


def test_stage2_ranking_term_reads_the_scored_boxes_and_their_labels(parts_smoke, monkeypatch):
    """``lambda_rank``: stage 2 adds ``lambda_rank * scene_ranking_loss`` of the logits and labels its BCE reads (the
    same boxes, unmatched ones -1), recorded as ``terms['rank']``."""
    out, _ = parts_smoke
    detector, checkpoint = load_detector(out / "final.pt")
    dataset = SceneDataset(checkpoint["data_root"], "train", family="parts", num_input_views=2, num_target_views=1,
                           image_size=tuple(checkpoint["image_size"]), seed=0)
    batch = engine.prepare_batch(engine.load_batch(dataset, [0, 1], [0, 0]), "cpu")
    kwargs = dict(render_size=(16, 16), feature_size=(16, 16), num_samples=8, use_distillation=False,
                  carve_from_gt=True, flip_boxes=False)
    seen = []
    real = engine.scene_ranking_loss

    def recording(logits, labels, scene):
        seen.append((logits.detach().clone(), labels.clone(), scene.clone()))
        return real(logits, labels, scene)

    monkeypatch.setattr(engine, "scene_ranking_loss", recording)
    with torch.no_grad():
        loss0, terms0 = engine.stage2_loss(detector, batch, None, **kwargs)
        loss1, terms1 = engine.stage2_loss(detector, batch, None, lambda_rank=0.5, **kwargs)
    assert "rank" not in terms0 and len(seen) == 1 and torch.equal(terms0["bce"], terms1["bce"])
    logits, labels, scene = seen[0]
    assert set(labels.tolist()) <= {-1, 0, 1} and (labels == 1).any() and (labels == 0).any()
    assert float(terms1["rank"]) == pytest.approx(float(real(logits, labels, scene)), rel=1e-6)
    assert float(loss1 - loss0) == pytest.approx(0.5 * float(terms1["rank"]), rel=1e-4, abs=1e-6)


def _two_scene_batch(checkpoint, scenes=(0, 1)):
    dataset = SceneDataset(checkpoint["data_root"], "train", family="parts", num_input_views=2, num_target_views=1,
                           image_size=tuple(checkpoint["image_size"]), seed=0)
    return engine.prepare_batch(engine.load_batch(dataset, list(scenes), [0] * len(scenes)), "cpu")


def test_stage2_loss_is_the_bce_of_the_scored_boxes_plus_lambda_p_times_the_reconstruction(parts_smoke, monkeypatch):
    """Stage 2's BCE against a hand-computed one on the logits the matcher gave and the labels of the boxes' matches
    (unmatched boxes, -1, left out); the loss is that BCE at lambda_p 0 and grows linearly with lambda_p."""
    out, _ = parts_smoke
    detector, checkpoint = load_detector(out / "final.pt")
    batch = _two_scene_batch(checkpoint)
    logits_seen, labels_seen = [], []
    real_score, real_boxes = detector.score_boxes, engine.training_boxes

    def scoring(*args, **kwargs):
        logits, tokens = real_score(*args, **kwargs)
        logits_seen.append(logits.detach().clone())
        return logits, tokens

    def labelling(*args, **kwargs):
        result = real_boxes(*args, **kwargs)
        labels_seen.append(result[2].clone())
        return result

    monkeypatch.setattr(detector, "score_boxes", scoring)
    monkeypatch.setattr(engine, "training_boxes", labelling)
    kwargs = dict(render_size=(16, 16), feature_size=(16, 16), num_samples=8, use_distillation=False,
                  carve_from_gt=True, flip_boxes=False)
    with torch.no_grad():
        losses = {p: engine.stage2_loss(detector, batch, None, lambda_p=p, **kwargs) for p in (0.0, 1.0, 2.0)}
    assert all(torch.equal(x, logits_seen[0]) for x in logits_seen)
    assert all(torch.equal(y, labels_seen[0]) for y in labels_seen)
    x, y = logits_seen[0].double().numpy(), labels_seen[0].numpy()
    used = y >= 0
    assert (y[used] == 1).any() and (y[used] == 0).any()
    bce = float(np.mean(np.logaddexp(0.0, x[used]) - y[used] * x[used]))  # -log sigmoid(x) if y else -log(1 - ...)
    assert float(losses[0.0][1]["bce"]) == pytest.approx(bce, rel=1e-5)
    assert float(losses[0.0][0]) == pytest.approx(bce, rel=1e-5)  # lambda_p 0: the BCE alone
    slope = float(losses[1.0][0] - losses[0.0][0])
    assert slope > 0 and float(losses[2.0][0] - losses[0.0][0]) == pytest.approx(2 * slope, rel=1e-4)


def test_distillation_reaches_the_features_and_not_the_density(parts_smoke, monkeypatch):
    """The feature term renders with detached density (the paper's stop-gradient): the gradient of the rendered
    features reaches the fields' feature channels and not their density; the rendered colour's reaches the density."""
    out, _ = parts_smoke
    detector, checkpoint = load_detector(out / "final.pt")
    scene_model = detector.scene_model
    batch = _two_scene_batch(checkpoint, scenes=(0,))
    output = scene_model(batch.images, batch.K, batch.world_to_cam, carve_masks=batch.masks)
    feats = output.fields.voxels.feats
    feats.retain_grad()
    captured = {}
    real = engine.reconstruction_loss

    def capturing(rgb, object_rgb, opacity, mask, pred_feat, gt_feat, **kwargs):
        captured.update(rgb=rgb, features=pred_feat)
        return real(rgb, object_rgb, opacity, mask, pred_feat, gt_feat, **kwargs)

    monkeypatch.setattr(engine, "reconstruction_loss", capturing)
    teacher = torch.randn(1, feats.shape[1] - 4, 16, 16)
    engine.reconstruction_terms(scene_model, output, batch, teacher, render_size=(16, 16), feature_size=(16, 16),
                                num_samples=8)
    captured["features"].square().sum().backward(retain_graph=True)
    assert feats.grad[:, 4:].abs().amax() > 0 and feats.grad[:, 0].abs().amax() == 0
    feats.grad = None
    captured["rgb"].sum().backward()
    assert feats.grad[:, 0].abs().amax() > 0


def test_recipe_passes_lambda_box_and_lambda_rank_to_stage2(parts_smoke, tmp_path, monkeypatch):
    out, _ = parts_smoke
    seen = []
    real = engine.Stage2Objective
    monkeypatch.setattr(engine, "Stage2Objective", lambda detector, **kwargs: seen.append(
        (kwargs["lambda_box"], kwargs["lambda_rank"])) or real(detector, **kwargs))
    warmup = engine.train_matcher_on_cache
    monkeypatch.setattr(engine, "train_matcher_on_cache",
                        lambda *args, **kwargs: seen.append(kwargs["rank_weight"]) or warmup(*args, **kwargs))
    for name in ("stage0.pt", "stage1.pt"):  # resume after stage 1: only the later steps run
        shutil.copy(out / name, tmp_path / name)
    load_recipe("train_partsad").main(["--preset", "smoke", "--out", str(tmp_path), "--lambda_box", "0.5",
                                       "--lambda_rank", "0.25", "--box_head_refresh_steps", "0"])
    assert seen == [0.25, (0.5, 0.25)]  # the warm-up's ranking weight, then stage 2's two weights
    assert load_checkpoint(tmp_path / "stage2.pt")["config"]["lambda_box"] == 0.5


def test_box_head_refresh_trains_the_head_alone_on_the_stage2_model_and_resumes(parts_smoke, tmp_path, monkeypatch):
    """Stage 2b: after stage 2 the box head trains again on proposals of the stage-2 scene model; final.pt is
    stage 2's weights with the refreshed head. A folder whose final.pt predates stage 2b gets it on resume, the
    same head; a finished one is loaded, not trained again; the held-out losses adopt the new head or keep stage
    2's; ``--box_head_refresh_steps 0`` leaves stage 2's head."""
    recipe = load_recipe("train_partsad")
    # every carved voxel of the GT-mask hull is object: the smoke model proposes boxes (it proposes none otherwise)
    options = ["--preset", "smoke", "--density_threshold", "-1", "--carve_from_gt_stage2", "--no-evaluate",
               "--box_head_refresh_holdout", "0"]
    out = tmp_path / "run"
    recipe.main([*options, "--out", str(out)])
    refresh, stage2 = load_checkpoint(out / "box_head_refresh.pt"), load_checkpoint(out / "stage2.pt")["model"]
    final = load_checkpoint(out / "final.pt")
    assert refresh["stage"] == "2b" and refresh["step"] == 2 and len(refresh["losses"]) == 2
    assert "validation" not in refresh  # nothing held out
    changed = {k for k in stage2 if not torch.equal(final["model"][k], stage2[k])}
    assert changed and all(k.startswith("box_head.") for k in changed)
    assert all(torch.equal(final["model"][k], refresh["model"][k]) for k in stage2)

    (out / "box_head_refresh.pt").unlink()  # a run folder of before stage 2b: final.pt is stage 2's weights
    save_checkpoint(out / "final.pt", dict(final, model=stage2))
    recipe.main([*options, "--out", str(out)])
    again = load_checkpoint(out / "final.pt")["model"]
    assert all(torch.equal(again[k], refresh["model"][k]) for k in stage2)

    def untouched(*args, **kwargs):
        raise AssertionError("a finished stage 2b was trained again")

    monkeypatch.setattr(engine, "train_box_head_on_cache", untouched)
    recipe.main([*options, "--out", str(out)])
    assert all(torch.equal(load_checkpoint(out / "final.pt")["model"][k], refresh["model"][k]) for k in stage2)
    monkeypatch.undo()
    shutil.rmtree(out)  # each run folder holds ~640 MB of checkpoints: keep one at a time on disk

    # the default hold-out (one of the three training scenes): the held-out losses and recalls decide; the losses
    # are set (0.9 before the first step, 0.4 after the last) so that the head is adopted at min gain 2, kept at 3
    # where the recall is not asked (-1); then the recalls are set (0.8 stage 2's, 0.9 the new head's)
    for min_gain, min_recall_gain, adopted, recalls in ((2.0, -1, True, None), (3.0, -1, False, None),
                                                        (1.0, 0.05, True, (0.9, 0.8)), (1.0, 0.2, False, (0.9, 0.8))):
        held = tmp_path / f"held-{min_gain:g}-{min_recall_gain:g}"
        losses = iter([0.9, 0.4])
        monkeypatch.setattr(engine, "box_head_cache_loss", lambda *args, **kwargs: next(losses))
        if recalls is not None:  # the new head's recall is measured first, then the stage-2 head's
            measured = iter(recalls)
            monkeypatch.setattr(engine, "box_recall_on_cache", lambda *args, **kwargs: {"recall": next(measured)})
        recipe.main([*options[:-2], "--out", str(held), "--box_head_refresh_steps", "4",
                     "--box_head_refresh_min_gain", str(min_gain),
                     "--box_head_refresh_min_recall_gain", str(min_recall_gain)])
        monkeypatch.undo()
        validation = load_checkpoint(held / "box_head_refresh.pt")["validation"]
        recorded = {key: validation.pop(key) for key in ("recall_best", "recall_start")}
        held_out = validation.pop("held_out_scenes")
        assert validation == dict(steps=[0, 4], losses=[0.9, 0.4], best_step=4, adopted=adopted,
                                  stage2_loss=0.9, init="stage2", fit="holdout", delta_scale_recalls=None,
                                  held_out_categories=None)  # the parts family: one category, scenes held out
        last, kept = load_checkpoint(held / "final.pt")["model"], load_checkpoint(held / "stage2.pt")["model"]
        same_head = all(torch.equal(last[k], kept[k]) for k in kept if k.startswith("box_head."))
        assert same_head == (not adopted)
        assert all(torch.equal(last[k], kept[k]) for k in kept if not k.startswith("box_head."))
        if recalls is not None:
            assert tuple(recorded.values()) == recalls
            shutil.rmtree(held)
            continue
        # the recorded held-out recall is that of the head final.pt ends with (stage 2's where kept)
        detector, checkpoint = load_detector(held / "final.pt")
        train_set = SceneDataset(checkpoint["data_root"], "train", family="parts", num_input_views=2,
                                 num_target_views=0, image_size=tuple(checkpoint["image_size"]), seed=0)
        cache = engine.cache_proposals(detector, train_set, carve_from_gt=True, progress=False)
        assert len(held_out) == 1 and set(held_out) < set(cache.scene.tolist())
        recall = engine.box_recall_on_cache(detector, cache.rows(torch.isin(cache.scene, torch.tensor(held_out))))
        assert recorded["recall_best" if adopted else "recall_start"] == recall["recall"]
        shutil.rmtree(held)

    # categories held out whole (the smoke scenes are all "parts_*": two categories are made up here)
    monkeypatch.setattr(recipe, "holdout_groups", lambda cfg, train_set: ["a", "b", "a"][:len(train_set)])
    by_category = tmp_path / "by-category"
    recipe.main([*options[:-2], "--out", str(by_category)])
    monkeypatch.undo()
    validation = load_checkpoint(by_category / "box_head_refresh.pt")["validation"]
    held_label = validation["held_out_categories"]
    assert held_label in (["a"], ["b"])
    assert validation["held_out_scenes"] == [i for i, g in enumerate(["a", "b", "a"]) if g == held_label[0]]
    shutil.rmtree(by_category)

    off = tmp_path / "off"
    recipe.main([*options, "--out", str(off), "--box_head_refresh_steps", "0"])
    assert not (off / "box_head_refresh.pt").exists()
    last, kept = load_checkpoint(off / "final.pt")["model"], load_checkpoint(off / "stage2.pt")["model"]
    assert all(torch.equal(last[k], kept[k]) for k in kept)


def test_box_head_refresh_from_a_fresh_head(parts_smoke, tmp_path, monkeypatch, capsys):
    """``--box_head_refresh_init fresh``: stage 2b trains a new head (what BoxHead builds under torch seed
    ``--seed``), not the stage-2 head, and judges it against the stage-2 head's own held-out loss (recorded as
    ``stage2_loss``; the history starts with the new head's)."""
    from oddsparse.models.box_head import BoxHead

    recipe = load_recipe("train_partsad")
    options = ["--preset", "smoke", "--density_threshold", "-1", "--carve_from_gt_stage2", "--no-evaluate",
               "--box_head_refresh_init", "fresh", "--seed", "5"]
    starts = []
    train = engine.train_box_head_on_cache

    def spy(detector, cache, **kwargs):
        starts.append({k: v.clone() for k, v in detector.box_head.state_dict().items()})
        return train(detector, cache, **kwargs)

    monkeypatch.setattr(engine, "train_box_head_on_cache", spy)
    out = tmp_path / "fresh"
    recipe.main([*options, "--out", str(out), "--box_head_refresh_holdout", "0"])
    assert len(starts) == 2  # stage 1b, then stage 2b
    head = load_checkpoint(out / "stage2.pt")["detector_kwargs"]
    torch.manual_seed(5)
    new = BoxHead(starts[1]["cnn.0.weight"].shape[1], resolution=head["box_head_resolution"],
                  channels=starts[1]["cnn.0.weight"].shape[0]).state_dict()
    assert all(torch.equal(starts[1][k], new[k]) for k in new)
    stage2 = load_checkpoint(out / "stage2.pt")["model"]
    assert not all(torch.equal(starts[1][k], stage2["box_head." + k]) for k in new)  # not the stage-2 head
    final = load_checkpoint(out / "final.pt")["model"]
    changed = {k for k in stage2 if not torch.equal(final[k], stage2[k])}
    assert changed and all(k.startswith("box_head.") for k in changed)
    # resumed with the other start: the finished 2b is kept, with a warning naming the file and the option
    capsys.readouterr()
    recipe.main([*options[:-4], "--seed", "5", "--out", str(out), "--box_head_refresh_holdout", "0"])
    assert (f"{out / 'box_head_refresh.pt'} was trained with --box_head_refresh_init fresh; this run asks for "
            f"--box_head_refresh_init stage2 but keeps it") in capsys.readouterr().err
    assert len(starts) == 2 and all(torch.equal(load_checkpoint(out / "final.pt")["model"][k], final[k]) for k in final)
    shutil.rmtree(out)

    # held out: the stage-2 head's loss is measured first (0.8), then the new head's before its first step (2.0)
    # and after its last (0.4): gain 0.8 / 0.4 = 2
    for min_gain, adopted in ((2.0, True), (2.1, False)):
        held = tmp_path / f"held-{min_gain:g}"
        losses = iter([0.8, 2.0, 0.4])
        monkeypatch.setattr(engine, "box_head_cache_loss", lambda *args, **kwargs: next(losses))
        recipe.main([*options, "--out", str(held), "--box_head_refresh_steps", "4",
                     "--box_head_refresh_min_gain", str(min_gain), "--box_head_refresh_min_recall_gain", "-1"])
        validation = load_checkpoint(held / "box_head_refresh.pt")["validation"]
        assert (validation["stage2_loss"], validation["losses"], validation["best_step"]) == (0.8, [2.0, 0.4], 4)
        assert validation["init"] == "fresh" and validation["adopted"] is adopted
        last, kept = load_checkpoint(held / "final.pt")["model"], load_checkpoint(held / "stage2.pt")["model"]
        assert all(torch.equal(last[k], kept[k]) for k in kept if k.startswith("box_head.")) == (not adopted)
        shutil.rmtree(held)
    with pytest.raises(SystemExit):
        recipe.parse_config(["--box_head_refresh_init", "new"])


def test_box_head_refresh_rule_by_hand():
    adopts = load_recipe("train_partsad").adopts_refreshed_head
    assert adopts(0.9, 4, 0.4, 2.0)  # loss alone: 0.9 >= 2 * 0.4
    assert not adopts(0.9, 4, 0.4, 3.0) and not adopts(0.9, 0, 0.4, 1.0)  # 0.9 < 1.2; step 0 is the stage-2 head
    assert adopts(0.9, 4, 0.4, 1.0, 0.90, 0.93, 0.02) and not adopts(0.9, 4, 0.4, 1.0, 0.90, 0.91, 0.02)  # recall gate
    assert adopts(0.9, 4, 0.4, 1.0, None, None, 0.02)  # a record without the recall: the loss alone


def test_box_head_refresh_holds_out_whole_categories_where_there_are_several():
    recipe = load_recipe("train_partsad")
    scenes = type("Scenes", (), {"scenes": [Path("/d/car_0001"), Path("/d/duck_0002"), Path("/d/car_0003")]})()
    by_category = recipe.parse_config([])  # the default
    assert recipe.holdout_groups(by_category, scenes) == ["car", "duck", "car"]
    assert recipe.holdout_groups(recipe.parse_config(["--box_head_refresh_holdout_by", "scene"]), scenes) is None
    parts = type("Scenes", (), {"scenes": [Path("/d/parts_0000"), Path("/d/parts_0001")]})()
    assert recipe.holdout_groups(by_category, parts) is None  # one category: whole scenes
    with pytest.raises(SystemExit):
        recipe.parse_config(["--box_head_refresh_holdout_by", "shape"])


def test_box_head_validation_keeps_the_head_with_the_lowest_held_out_loss(parts_smoke):
    detector, _, _, cache = _proposal_cache(parts_smoke)
    scenes = sorted(set(cache.scene.tolist()))
    assert len(scenes) >= 2
    kept, held = cache.split_scenes(0.5, seed=3)
    again, _ = cache.split_scenes(0.5, seed=3)
    assert torch.equal(kept.scene, again.scene) and len(kept) + len(held) == len(cache) and len(held) > 0
    assert not set(kept.scene.tolist()) & set(held.scene.tolist())  # whole scenes on each side
    assert set(kept.scene.tolist()) | set(held.scene.tolist()) == set(scenes)
    assert torch.equal(held.volumes, cache.volumes[torch.isin(cache.scene, held.scene)])
    with pytest.raises(ValueError, match="no scene index"):
        engine.ProposalCache(cache.volumes, cache.proposals, cache.targets, cache.matched).split_scenes(0.5)
    # by group (e.g. category): every scene of the held-out labels, none of the others
    groups = ["x" if i % 2 else "y" for i in range(max(scenes) + 1)]
    kept_g, held_g = cache.split_scenes(0.5, seed=3, groups=groups)
    held_labels = {groups[i] for i in held_g.scene.tolist()}
    assert len(held_labels) == 1 and not held_labels & {groups[i] for i in kept_g.scene.tolist()}
    assert set(held_g.scene.tolist()) == {i for i in scenes if groups[i] in held_labels}
    assert set(held_g.gt_scene.tolist()) == set(held_g.scene.tolist())
    assert torch.equal(cache.split_scenes(0.5, seed=3, groups=list(range(max(scenes) + 1)))[1].scene, held.scene)
    with pytest.raises(ValueError, match="groups has 1 labels"):
        cache.split_scenes(0.5, groups=["x"])

    # the cache loss is box_head_loss over every row at once
    with torch.no_grad():
        deltas, objectness = detector.box_head(held.volumes.float())
        expected, _ = engine.box_head_loss(deltas, objectness, engine._boxes_of(held.proposals),
                                           engine._boxes_of(held.targets), held.matched)
    assert engine.box_head_cache_loss(detector, held, chunk=1) == pytest.approx(float(expected), rel=1e-5)

    # a diverging training (lr 10): no step beats the starting head, which is kept bit for bit
    start = {k: v.clone() for k, v in detector.box_head.state_dict().items()}
    history: list = []
    engine.train_box_head_on_cache(detector, kept, steps=6, batch_size=4, lr=10.0, grad_clip=None, progress=False,
                                   validation=held, validate_every=2, history=history)
    assert [row[0] for row in history[:-1]] == [0, 2, 4, 6] and history[-1][:2] == ("best", 0)
    assert all(loss > history[0][1] for _, loss in history[1:-1])
    assert all(torch.equal(v, start[k]) for k, v in detector.box_head.state_dict().items())

    # validated on the training rows themselves, a normal training improves: the head of the lowest loss is kept
    history = []
    engine.train_box_head_on_cache(detector, kept, steps=6, batch_size=64, lr=1e-3, progress=False,
                                   validation=kept, validate_every=3, history=history)
    steps, losses = zip(*history[:-1])
    best = min(range(len(losses)), key=losses.__getitem__)
    assert steps == (0, 3, 6) and history[-1][1:] == (steps[best], losses[best]) and steps[best] > 0
    assert engine.box_head_cache_loss(detector, kept) == pytest.approx(losses[best], rel=1e-5)


def test_proposal_targets_one_to_one_and_fragments_by_hand():
    """Scene 0 holds a 0.4 m long part split in two halves (each IoU 0.5 with it by hand: one is matched one-to-one,
    the other is a fragment wholly inside) and a ghost beside it; scene 1 a proposal inside scene 0's GT box's
    footprint but of another scene. ``cover`` matches the second half to the part, never the ghost or another
    scene's proposal."""
    from oddsparse.geometry.boxes import YawBoxes

    def boxes(rows):
        rows = torch.tensor(rows, dtype=torch.float32)
        return YawBoxes(rows[:, :3], rows[:, 3:6], rows[:, 6])

    gt = boxes([[0.0, 0.0, 0.03, 0.4, 0.05, 0.06, 0.0], [2.0, 0.0, 0.03, 0.2, 0.2, 0.06, 0.0]])
    gt_scene = torch.tensor([0, 1])
    proposals = boxes([[-0.1, 0.0, 0.03, 0.2, 0.05, 0.06, 0.0], [0.1, 0.0, 0.03, 0.2, 0.05, 0.06, 0.0],
                       [0.0, 0.5, 0.03, 0.1, 0.1, 0.06, 0.0], [0.0, 0.0, 0.03, 0.2, 0.05, 0.06, 0.0]])
    scene = torch.tensor([0, 0, 0, 1])
    targets, matched = engine.proposal_targets(proposals, scene, gt, gt_scene, match_iou=0.2)
    assert matched.tolist() in ([True, False, False, False], [False, True, False, False])  # one half (tie)
    half = int(torch.nonzero(matched)[0])
    assert torch.allclose(targets.center[half], gt.center[0]) and torch.allclose(targets.size[half], gt.size[0])
    assert torch.equal(targets.center[~matched], proposals.center[~matched])  # the others keep their own box
    targets, matched = engine.proposal_targets(proposals, scene, gt, gt_scene, match_iou=0.2, cover=0.5)
    assert matched.tolist() == [True, True, False, False]
    assert torch.allclose(targets.center[:2], gt.center[:1].expand(2, 3))
    assert torch.allclose(targets.size[:2], gt.size[:1].expand(2, 3))
    # a fragment half inside: matched at cover 0.5, not at 0.6
    shifted = boxes([[0.2, 0.0, 0.03, 0.2, 0.05, 0.06, 0.0], [0.0, 0.0, 0.03, 0.4, 0.05, 0.06, 0.0]])
    two = torch.tensor([0, 0])
    assert engine.proposal_targets(shifted, two, gt, gt_scene, cover=0.5)[1].tolist() == [True, True]
    assert engine.proposal_targets(shifted, two, gt, gt_scene, cover=0.6)[1].tolist() == [False, True]


def test_box_head_loss_hand_values():
    from oddsparse.geometry.boxes import YawBoxes

    proposals = YawBoxes(torch.zeros(2, 3), torch.tensor([[0.2, 0.1, 0.1], [0.2, 0.1, 0.1]]), torch.zeros(2))
    targets = YawBoxes(torch.tensor([[0.02, 0.0, 0.0], [0.0, 0.0, 0.0]]), torch.tensor([[0.2, 0.1, 0.1]] * 2),
                       torch.zeros(2))
    deltas = torch.zeros(2, 7)
    objectness = torch.tensor([0.0, 0.0])
    matched = torch.tensor([True, False])
    loss, terms = engine.box_head_loss(deltas, objectness, proposals, targets, matched, beta=0.05)
    # only the matched proposal regresses: dx = 0.02 / 0.2 = 0.1 > beta: |0.1| - beta / 2, mean over 7 deltas
    assert float(terms["box_regression"]) == pytest.approx((0.1 - 0.025) / 7, rel=1e-5)
    assert float(terms["objectness"]) == pytest.approx(float(torch.log(torch.tensor(2.0))), rel=1e-5)
    assert float(loss) == pytest.approx(float(terms["box_regression"] + terms["objectness"]), rel=1e-6)


def test_random_box_flips_turn_half_the_boxes_by_pi():
    from oddsparse.geometry.boxes import YawBoxes

    boxes = YawBoxes(torch.zeros(4000, 3), torch.ones(4000, 3), torch.linspace(-1, 1, 4000))
    flipped = engine.random_box_flips(boxes, torch.Generator().manual_seed(0))
    turned = (flipped.yaw - boxes.yaw).abs() > 1
    assert torch.allclose((flipped.yaw - boxes.yaw)[turned], torch.full((int(turned.sum()),), torch.pi))
    assert torch.equal(flipped.yaw[~turned], boxes.yaw[~turned]) and 0.45 < turned.float().mean() < 0.55


def test_stage0_trains_the_encoder_and_foreground_only(parts_smoke):
    out, _ = parts_smoke
    detector, checkpoint = load_detector(out / "final.pt")
    dataset = SceneDataset(checkpoint["data_root"], "train", family="parts", num_input_views=2, num_target_views=0,
                           image_size=tuple(checkpoint["image_size"]), seed=0)
    batch = engine.prepare_batch(engine.load_batch(dataset, [0, 1], [0, 0]), "cpu")
    detector.train()
    loss, terms = engine.ForegroundObjective(detector.scene_model)(batch, None)
    from oddsparse.models.scene_model import foreground_loss

    _, logits = detector.scene_model.encode(batch.images)  # the same BCE the stage-1 loss holds
    assert float(loss) == pytest.approx(float(foreground_loss(logits, batch.masks)), rel=1e-6)
    assert float(terms["foreground"]) == pytest.approx(float(loss))
    loss.backward()
    touched = {name.split(".")[1] for name, p in detector.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert touched == {"encoder", "foreground", "foreground_refiner"} - ({"foreground_refiner"} if
                                                                          detector.scene_model.foreground_refiner is None
                                                                          else set())


def test_sweep_seeds_stage1_and_box_head_with_a_fresh_matcher(parts_smoke, tmp_path):
    sweep = load_recipe("sweep_variants")
    source = parts_smoke[0]
    sweep.seed_stage1(source, tmp_path, "C")
    for name in ("stage0.pt", "stage1.pt", "box_head.pt"):
        original, seeded = load_checkpoint(source / name), load_checkpoint(tmp_path / name)
        assert seeded["detector_kwargs"]["variant"] == "C" and seeded["config"]["variant"] == "C"
        assert seeded["step"] == original["step"] and seeded["stage"] == original["stage"]
        shared = ("scene_model.", "box_head.") if name == "box_head.pt" else ("scene_model.",)
        for key, value in seeded["model"].items():
            if key.startswith(shared):
                assert torch.equal(value, original["model"][key]), key
        # the matcher is the one the recipe would initialise for C (seeded before building the detector)
        torch.manual_seed(original["config"]["seed"])
        fresh = build_detector(original["scene_kwargs"], dict(original["detector_kwargs"], variant="C")).state_dict()
        assert all(torch.equal(seeded["model"][k], fresh[k]) for k in fresh if k.startswith("matcher."))
    if (source / "teacher_pca.npz").is_file():
        assert (tmp_path / "teacher_pca.npz").read_bytes() == (source / "teacher_pca.npz").read_bytes()


def test_sweep_reuse_builds_the_matcher_from_this_sweeps_options(parts_smoke, tmp_path):
    """--reuse: an earlier run's finished steps seeded with a matcher of other options, resumed by the recipe."""
    sweep = load_recipe("sweep_variants")
    source = parts_smoke[0]
    assert load_checkpoint(source / "stage1.pt")["detector_kwargs"]["matcher_distance_input"]  # the default
    options = ["--preset", "smoke", "--no-matcher_distance_input"]
    kwargs = sweep.recipe_model_kwargs("full", options)
    assert not kwargs[1]["matcher_distance_input"] and kwargs[0] == load_checkpoint(source / "stage1.pt")["scene_kwargs"]
    target = tmp_path / "full"
    sweep.seed_stage1(source, target, "full", kwargs)
    for name in ("stage0.pt", "stage1.pt", "box_head.pt"):
        original, seeded = load_checkpoint(source / name), load_checkpoint(target / name)
        assert seeded["detector_kwargs"] == kwargs[1] and seeded["config"]["matcher_distance_input"] is False
        torch.manual_seed(original["config"]["seed"])
        fresh = build_detector(*kwargs)
        fresh.load_state_dict(seeded["model"])  # strict: the seeded weights fit the detector of these options
        for key, value in seeded["model"].items():
            expected = original["model"][key] if key.startswith("scene_model.") else fresh.state_dict()[key]
            assert torch.equal(value, expected), key
    # the source's matcher head takes the distance inputs, the seeded one not: some weights differ in shape
    head = [k for k in seeded["model"] if k.startswith("matcher.") and seeded["model"][k].shape
            != original["model"].get(k, seeded["model"][k]).shape]
    assert head, "no matcher weight changed shape without matcher_distance_input"
    # the recipe resumes the seeded folder: stage 0/1 and the box head are not retrained
    before = {name: (target / name).read_bytes() for name in ("stage0.pt", "stage1.pt", "box_head.pt")}
    load_recipe("train_partsad").main([*options, "--out", str(target), "--no-evaluate"])
    assert all((target / name).read_bytes() == data for name, data in before.items())
    detector, _ = load_detector(target / "final.pt")
    assert not detector.matcher_distance_input
    # another scene model is refused, naming the checkpoint and the field
    other = sweep.recipe_model_kwargs("full", ["--preset", "smoke", "--feature_channels", "4"])
    with pytest.raises(SystemExit, match=r"stage0\.pt: scene_kwargs differ .*feature_channels"):
        sweep.seed_stage1(source, tmp_path / "other", "full", other)
    # a checkpoint written before encoder_norm existed holds a batch-norm encoder: reused with it, refused without
    older = tmp_path / "older"
    older.mkdir()
    batch = sweep.recipe_model_kwargs("full", [*options, "--encoder_norm", "batch"])
    assert kwargs[0]["encoder_norm"] == "group"
    checkpoint = load_checkpoint(source / "stage0.pt")
    checkpoint.update(scene_kwargs={k: v for k, v in batch[0].items() if k != "encoder_norm"},
                      model=build_detector(*batch).state_dict())
    save_checkpoint(older / "stage0.pt", checkpoint)
    with pytest.raises(SystemExit, match=r"older/stage0\.pt: scene_kwargs differ from this sweep's \(encoder_norm\)"):
        sweep.seed_stage1(older, tmp_path / "older-group", "full", kwargs)
    sweep.seed_stage1(older, tmp_path / "older-batch", "full", batch)
    build_detector(*batch).load_state_dict(load_checkpoint(tmp_path / "older-batch" / "stage0.pt")["model"])  # strict
    # variant A compares nothing: the recipe turns the matcher's distance input off for it, even when asked
    a_kwargs = sweep.recipe_model_kwargs("A", ["--preset", "smoke", "--matcher_distance_input", "--register_objects"])[1]
    assert a_kwargs["matcher_distance_input"] is False and a_kwargs["register_objects"] is False
    assert a_kwargs["box_consensus"] is True  # box estimation, not a comparison of anomalies: A has it too
    # the scene-consensus and registration options are matcher options of a --reuse sweep
    plain = sweep.recipe_model_kwargs("full", ["--preset", "smoke", "--no-box_consensus", "--no-register_objects"])[1]
    assert plain["box_consensus"] is False and plain["register_objects"] is False


def test_sweep_reuse_refuses_a_box_head_of_other_proposals_and_can_retrain_it(parts_smoke, tmp_path):
    """merge_floating changes the DBSCAN proposals the box head is trained on: --reuse refuses the source's
    box head when it differs, and --retrain-box-head (box_head=False) copies stage 0 and 1 only."""
    sweep = load_recipe("sweep_variants")
    source = parts_smoke[0]
    assert load_checkpoint(source / "box_head.pt")["detector_kwargs"]["merge_floating"] == 2.0  # the default
    options = ["--preset", "smoke", "--merge_floating", "0"]
    kwargs = sweep.recipe_model_kwargs("full", options)
    with pytest.raises(SystemExit, match=r"box_head\.pt: detector_kwargs\.merge_floating is 2\.0.*--retrain-box-head"):
        sweep.seed_stage1(source, tmp_path / "refused", "full", kwargs)
    # a box head of other weights (the size input) is refused the same way, before a load fails on its shapes
    sized = sweep.recipe_model_kwargs("full", ["--preset", "smoke", "--box_head_size_input"])
    with pytest.raises(SystemExit, match=r"box_head\.pt: detector_kwargs: box_head_size_input is False, this "
                                         r"sweep's True; .*--retrain-box-head"):
        sweep.seed_stage1(source, tmp_path / "refused-size", "full", sized)
    target = tmp_path / "full"
    sweep.seed_stage1(source, target, "full", kwargs, box_head=False)
    assert sorted(p.name for p in target.glob("*.pt")) == ["stage0.pt", "stage1.pt"]
    assert load_checkpoint(target / "stage1.pt")["config"]["merge_floating"] == 0.0
    # a checkpoint from before the option existed reads as merge_floating 0 (off): its box head is reused
    old = load_checkpoint(source / "box_head.pt")
    del old["detector_kwargs"]["merge_floating"]
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    save_checkpoint(legacy / "box_head.pt", old)
    sweep.seed_stage1(legacy, tmp_path / "from-legacy", "full", kwargs)
    assert (tmp_path / "from-legacy" / "box_head.pt").is_file()
    # the recipe trains the box head anew on the seeded folder, and keeps stage 0 and 1
    before = {name: (target / name).read_bytes() for name in ("stage0.pt", "stage1.pt")}
    load_recipe("train_partsad").main([*options, "--out", str(target), "--no-evaluate"])
    assert all((target / name).read_bytes() == data for name, data in before.items())
    trained = load_checkpoint(target / "box_head.pt")  # written by this run (the seeding left none)
    assert trained["stage"] == "1b" and trained["detector_kwargs"]["merge_floating"] == 0.0


def test_sweep_bootstrap_intervals_and_table(tmp_path):
    sweep = load_recipe("sweep_variants")

    def report(values):
        return {"object_AUROC": 0.0, "per_scene": [{"name": f"s{i}", "object_AUROC": v} for i, v in enumerate(values)]}

    # constant per-scene values: the interval collapses to the value, the paired difference to the offset
    interval, diff = sweep.bootstrap_auroc(report([0.7] * 9 + [None]), report([0.5] * 9 + [None]))
    assert interval == pytest.approx((0.7, 0.7)) and diff == pytest.approx((0.2, 0.2))
    # pairing is by scene name: a shuffled reference gives the same interval of the difference
    values, ref = [0.1, 0.9, 0.4, 0.6, 0.8], [0.0, 0.8, 0.3, 0.5, 0.7]
    shuffled = {"per_scene": list(reversed(report(ref)["per_scene"]))}
    assert sweep.bootstrap_auroc(report(values), shuffled)[1] == pytest.approx((0.1, 0.1))
    low, high = sweep.bootstrap_auroc(report(values))[0]
    assert min(values) <= low < sum(values) / 5 < high <= max(values)
    # the collected table has the interval columns
    for variant, values_v in (("A", ref), ("full", values)):
        folder = tmp_path / variant / "eval_gt_boxes"
        folder.mkdir(parents=True)
        (folder / "report.json").write_text(json.dumps(dict(report(values_v), object_AUROC=sum(values_v) / 5)))
    sweep.collect(tmp_path, ["A", "full"])
    table = (tmp_path / "results.md").read_text()
    assert "| full | gt | 0.560 |" in table and "+0.10 to +0.10" in table
    lines = [line.strip("|").split("|") for line in table.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0]]
    rows = {tuple(cell.strip() for cell in line[:2]): dict(zip(header, (c.strip() for c in line))) for line in lines[1:]}
    full_interval = sweep.bootstrap_auroc(report(values))[0]
    assert rows[("full", "gt")]["object_AUROC 95% CI"] == "{:.2f}-{:.2f}".format(*full_interval)  # its own interval
    assert rows[("full", "gt")]["minus A, 95% CI"] == "+0.10 to +0.10"
    assert rows[("A", "gt")]["minus A, 95% CI"] == "n/a" and rows[("A", "gt")]["object_AUROC"] == "0.460"


def test_sweep_seeds_spread_is_max_minus_min_over_three_seeds(tmp_path):
    """With three seeds whose extremes are not the first and last: spread 0.8 - 0.6 (the first minus the last
    would read 0.1), mean 0.7 (by hand)."""
    sweep = load_recipe("sweep_variants")
    for seed, value in enumerate((0.7, 0.8, 0.6)):
        for variant, v in (("A", 0.5), ("full", value)):
            folder = tmp_path / f"s{seed}" / variant / "eval"
            folder.mkdir(parents=True)
            (folder / "report.json").write_text(json.dumps(
                {"object_AUROC": v, "per_scene": [{"name": f"x{i}", "object_AUROC": v} for i in range(3)]}))
    results = sweep.collect_seeds([tmp_path / f"s{i}" for i in range(3)], ["A", "full"], tmp_path / "out")
    full = results["predicted"]["full"]
    assert full["values"] == pytest.approx([0.7, 0.8, 0.6]) and full["mean"] == pytest.approx(0.7)
    assert full["spread"] == pytest.approx(0.2)


def test_sweep_seeds_table_by_hand(tmp_path):
    sweep = load_recipe("sweep_variants")

    def write(folder, values):
        folder.mkdir(parents=True)
        report = {"object_AUROC": sum(values) / len(values),
                  "per_scene": [{"name": f"s{i}", "object_AUROC": v} for i, v in enumerate(values)]}
        (folder / "report.json").write_text(json.dumps(report))

    # two seeds; per-scene values constant, so each interval is its value and each paired one the offset
    for seed, (a, full) in enumerate(((0.5, 0.7), (0.6, 0.65))):
        write(tmp_path / f"s{seed}" / "A" / "eval", [a] * 4)
        write(tmp_path / f"s{seed}" / "full" / "eval", [full] * 4)
    write(tmp_path / "s0" / "B" / "eval", [0.9] * 4)  # only in one sweep: left out
    results = sweep.collect_seeds([tmp_path / "s0", tmp_path / "s1"], ["A", "B", "full"], tmp_path / "out")
    assert set(results["predicted"]) == {"A", "full"} and "gt" not in results
    full = results["predicted"]["full"]
    assert full["values"] == pytest.approx([0.7, 0.65]) and full["mean"] == pytest.approx(0.675)
    assert full["spread"] == pytest.approx(0.05)
    assert [d["value"] for d in full["minus_A"]] == pytest.approx([0.2, 0.05])
    assert [tuple(d["interval"]) for d in full["minus_A"]] == [pytest.approx((0.2, 0.2)), pytest.approx((0.05, 0.05))]
    assert results["predicted"]["A"]["minus_A"] is None
    table = (tmp_path / "out" / "seeds.md").read_text()
    assert "| full | predicted | 0.700 (0.70-0.70) | 0.650 (0.65-0.65) | 0.675 | 0.050 | +0.200" in table
    assert (tmp_path / "out" / "seeds.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="no variant"):
        sweep.collect_seeds([tmp_path / "s0", tmp_path / "s1"], ["C"], tmp_path / "out")


def test_sweep_miss_split_by_hand(tmp_path):
    sweep = load_recipe("sweep_variants")

    def scene(name, auroc, matched=3, objects=3):
        return {"name": name, "object_AUROC": auroc, "num_matched": matched, "num_objects": objects}

    predicted = {"per_scene": [scene("a", 1.0), scene("b", 0.5), scene("c", 0.0, matched=2),
                               scene("d", None), scene("e", 0.25, matched=1, objects=4)]}
    gt = {"per_scene": [scene("a", 1.0), scene("b", 1.0), scene("c", 0.5), scene("d", 1.0), scene("e", 1.0)]}
    split = sweep.miss_split(predicted, gt)
    assert split["all_matched"] == (2, 0.75, 1.0)  # a, b (d has no predicted-box AUROC)
    assert split["some_missed"] == (2, 0.125, 0.75)  # c, e
    assert sweep.miss_split({"per_scene": [scene("a", 1.0)]}, gt)["some_missed"] == (0, None, None)
    for boxes, report in (("eval", predicted), ("eval_gt_boxes", gt)):
        (tmp_path / "full" / boxes).mkdir(parents=True)
        (tmp_path / "full" / boxes / "report.json").write_text(json.dumps(dict(report, object_AUROC=0.5)))
    sweep.collect(tmp_path, ["full"])
    assert "| full | 2 | 0.750 / 1.000 | 2 | 0.125 / 0.750 |" in (tmp_path / "results.md").read_text()


def test_sweep_table_has_the_seen_unseen_columns(tmp_path):
    sweep = load_recipe("sweep_variants")
    split = {"seen": {"object_AUROC": 0.9, "object_accuracy": 0.8}, "unseen": {"object_AUROC": 0.7, "object_accuracy": None}}
    for boxes, report in (("eval", {"per_split": split}), ("eval_gt_boxes", {"per_split": {"seen": {"object_AUROC": 1.0}}})):
        (tmp_path / "full" / boxes).mkdir(parents=True)
        (tmp_path / "full" / boxes / "report.json").write_text(json.dumps(dict(report, object_AUROC=0.5)))
    sweep.collect(tmp_path, ["full"])
    table = (tmp_path / "results.md").read_text()
    assert "| variant | seen | unseen |" in table
    assert "| full | 0.900 / 0.800; 1.000 / n/a | 0.700 / n/a; n/a / n/a |" in table
    sweep.collect(tmp_path / "none", [])  # no report with a split breakdown: no such table
    assert "seen" not in (tmp_path / "none" / "results.md").read_text()


def test_target_depth_hand_values():
    """4 x 4 -> 2 x 2: a render pixel is valid only when its 4 image pixels are finite object pixels."""
    from oddsparse.geometry.boxes import YawBoxes

    depth = torch.tensor([[1.0, 2.0, 5.0, 5.0],
                          [3.0, 4.0, 5.0, 5.0],
                          [1.0, 1.0, float("inf"), 2.0],
                          [1.0, 1.0, 2.0, 2.0]])
    masks = torch.tensor([[1, 1, 1, 0],
                          [1, 1, 1, 1],
                          [1, 1, 1, 1],
                          [1, 1, 1, 1]], dtype=torch.bool)
    none = torch.zeros(0)
    batch = engine.PreparedBatch(images=torch.zeros(1, 1, 4, 4, 3, dtype=torch.uint8), K=none, world_to_cam=none,
                                 masks=none, target_images=None, target_masks=masks[None, None],
                                 target_K=None, target_world_to_cam=None, target_view_ids=None,
                                 gt_boxes=YawBoxes(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0)),
                                 gt_labels=none, gt_scene=none, scene_names=["s"], target_depth=depth[None, None])
    out = engine.target_depth(batch, (2, 2))
    # top-left: mean of 1, 2, 3, 4; top-right: one background pixel; bottom-right: one inf depth
    assert out["depth_valid"].tolist() == [[[True, False], [True, False]]]
    assert out["gt_depth"][0, 0, 0].item() == pytest.approx(2.5) and out["gt_depth"][0, 1, 0].item() == 1.0
    assert torch.isfinite(out["gt_depth"]).all()


def test_target_depth_back_projects_onto_the_gt_objects(parts_smoke):
    """Valid render pixels of the GT depth, lifted through the target cameras, land in the GT object boxes.

    Checks the depth target's convention (z-depth, pixel centres of the render resolution, the camera of
    each view) against the generator's boxes, which share none of that code.
    """
    from oddsparse.geometry.cameras import pixel_rays, scale_intrinsics

    data_root = Path(load_checkpoint(parts_smoke[0] / "final.pt")["data_root"])
    dataset = SceneDataset(data_root, "train", num_input_views=2, num_target_views=2, image_size=64, seed=0)
    batch = engine.prepare_batch(engine.load_batch(dataset, [0, 1], [0, 0]), "cpu")
    render = (32, 32)
    target = engine.target_depth(batch, render)
    K = scale_intrinsics(batch.target_K.flatten(0, 1), render[1] / 64, render[0] / 64)
    origins, directions = pixel_rays(K, batch.target_world_to_cam.flatten(0, 1), *render)
    points = origins + directions * target["gt_depth"].flatten(1)[..., None]  # (B*T, R, 3)
    valid = target["depth_valid"].flatten(1)
    scene_of_view = torch.arange(batch.batch_size).repeat_interleave(batch.target_K.shape[1])
    inside_fraction = []
    for view in range(points.shape[0]):
        pts = points[view][valid[view]]
        assert pts.shape[0] > 5, f"view {view} shows objects ({pts.shape[0]} valid pixels)"
        boxes = batch.gt_scene == scene_of_view[view]
        center, size, yaw = (t[boxes] for t in batch.gt_boxes)
        local = pts[:, None, :] - center[None]  # (P, O, 3)
        c, s = torch.cos(yaw), torch.sin(yaw)
        x = c * local[..., 0] + s * local[..., 1]
        y = -s * local[..., 0] + c * local[..., 1]
        local = torch.stack([x, y, local[..., 2]], dim=-1)
        inside = (local.abs() <= size / 2 + 0.03).all(dim=-1).any(dim=1)  # 3 cm: area-averaged edge depths
        inside_fraction.append(float(inside.float().mean()))
    # 0.86 with Euclidean instead of z-depth, 0 with the render transposed
    assert min(inside_fraction) > 0.9, inside_fraction


def test_report_stage1_measures_the_trained_weights_against_their_initialisation(parts_smoke, tmp_path):
    from oddsparse.eval.reconstruction import evaluate_reconstruction

    out, _ = parts_smoke
    options = ["--checkpoint", str(out / "stage1.pt"), "--out", str(tmp_path), "--scenes", "1", "--target-views", "1",
               "--num-samples", "8"]
    report = load_recipe("report_stage1").main(options)
    checkpoint = load_checkpoint(out / "stage1.pt")
    assert report["stage1_steps"] == checkpoint["step"] == 3 and report["test_scenes"] == 1
    dataset = SceneDataset(checkpoint["data_root"], "test", family="parts", num_input_views=report["input_views"],
                           num_target_views=1, image_size=tuple(checkpoint["image_size"]), seed=1234)
    # the trained entry is the checkpoint's scene model (loaded here the way `oddsparse eval` loads a detector),
    # the initial one the recipe's initialisation (seeded before building, as the recipe does)
    detector, _ = load_detector(out / "stage1.pt")
    torch.manual_seed(checkpoint["config"]["seed"])
    initial = build_detector(checkpoint["scene_kwargs"], checkpoint["detector_kwargs"]).scene_model
    for key, model, masks in (("trained", detector.scene_model, False), ("initial", initial, False),
                              ("trained_gt_carving", detector.scene_model, True)):
        with torch.no_grad():
            expected = evaluate_reconstruction(model, dataset, num_samples=8, max_scenes=1, carve_masks=masks,
                                               progress=False)
        for metric in ("psnr", "mask_iou", "carving_recall", "carving_occupancy"):
            assert report[key][metric] == pytest.approx(expected[metric], rel=1e-5, abs=1e-6), (key, metric)
    # the smoke model's predicted foreground carves nothing (trained and initial then render the same empty
    # scene); carved from GT masks, the trained weights render otherwise than the initial ones
    with torch.no_grad():
        initial_gt = evaluate_reconstruction(initial, dataset, num_samples=8, max_scenes=1, carve_masks=True,
                                             progress=False)
    assert report["trained_gt_carving"]["psnr"] != pytest.approx(initial_gt["psnr"], rel=1e-3)
    written = json.loads((tmp_path / "stage1_report.json").read_text())
    assert written["trained"] == pytest.approx(report["trained"]) and "per_scene" not in written["trained"]
    assert len(list(tmp_path.glob("stage1_*.png"))) == 1  # one test scene: one figure


def test_recipe_evaluates_final_pt_on_the_test_split_with_both_box_kinds(parts_smoke, tmp_path):
    """A finished smoke run resumed with --evaluate trains nothing and writes eval/ (estimated boxes) and
    eval_gt_boxes/ (GT boxes): the reports `oddsparse eval` computes for final.pt at the recipe's input views."""
    from oddsparse.eval.evaluate import evaluate_detector

    out, _ = parts_smoke
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "teacher_pca.npz", *(p.name for p in out.glob("*.pt"))):
        if (out / name).is_file():
            os.link(out / name, run / name)  # checkpoints are replaced by rename, never written in place
    before = {p.name: p.stat().st_ino for p in run.glob("*.pt")}
    load_recipe("train_partsad").main(["--preset", "smoke", "--out", str(run), "--evaluate"])
    assert {p.name: p.stat().st_ino for p in run.glob("*.pt") if p.name != "final.pt"} == \
        {k: v for k, v in before.items() if k != "final.pt"}  # no step trained again
    detector, checkpoint = load_detector(run / "final.pt")
    for boxes, folder in (("predicted", "eval"), ("gt", "eval_gt_boxes")):
        written = json.loads((run / folder / "report.json").read_text())
        expected = evaluate_detector(detector, checkpoint["data_root"], "test", views=(2,), image_size=(64, 64),
                                     boxes=boxes, progress=False)
        assert written["num_scenes"] == expected["num_scenes"] >= 1
        for key in ("object_AUROC", "object_accuracy", "object_AUROC_pooled", "box_recall"):
            assert written.get(key) == pytest.approx(expected.get(key), nan_ok=True), (boxes, key)
        assert (run / folder / "roc.png").is_file()
    assert json.loads((run / "eval_gt_boxes" / "report.json").read_text())["box_recall"] == 1.0
    assert json.loads((run / "eval" / "report.json").read_text())["settings"]["box_source"] == "metadata"
    # --box_source observed: the reports score against the GT boxes fitted to the views
    load_recipe("train_partsad").main(["--preset", "smoke", "--out", str(run), "--evaluate",
                                       "--box_source", "observed"])
    written = json.loads((run / "eval" / "report.json").read_text())
    expected = evaluate_detector(detector, checkpoint["data_root"], "test", views=(2,), image_size=(64, 64),
                                 box_source="observed", progress=False)
    assert written["settings"]["box_source"] == "observed"
    assert written["box_recall"] == pytest.approx(expected["box_recall"], nan_ok=True)
    assert written["object_AUROC"] == pytest.approx(expected["object_AUROC"], nan_ok=True)


def test_missing_local_weights_are_refused_before_any_data_is_made(tmp_path, monkeypatch):
    """`--preset full` distils DINOv2 from a local file: without --dinov2_path (or with a path that does not exist)
    the recipe stops at once, naming the option, instead of after generating the synthetic data."""
    recipe = load_recipe("train_partsad")
    monkeypatch.setenv("ODDSPARSE_CACHE", str(tmp_path / "cache"))

    class DataStep(Exception):
        pass

    def data_step(*args, **kwargs):
        raise DataStep

    monkeypatch.setattr(engine, "ensure_synthetic_dataset", data_step)
    cases = [(["--preset", "full"], r"--teacher dinov2 \(variant full distils it\) needs --dinov2_path"),
             (["--preset", "full", "--variant", "C", "--dinov2_path", str(tmp_path / "dino.pt")],
              rf"--dinov2_path {tmp_path / 'dino.pt'}: file not found"),
             (["--preset", "smoke", "--encoder_norm", "batch", "--pretrained_backbone_path", "r18.pth"],
              r"--pretrained_backbone_path r18.pth: file not found")]
    for options, message in cases:
        with pytest.raises(SystemExit, match=message):  # raised before the data step
            recipe.main([*options, "--out", str(tmp_path / "run")])
    # the command line refuses another teacher (an argparse choice); a Config built in code is refused here
    with pytest.raises(SystemExit, match=r"--teacher must be sift or dinov2, got 'clip'"):
        recipe.check_local_files(dataclasses.replace(recipe.parse_config(["--preset", "smoke"]), teacher="clip"))
    assert not (tmp_path / "cache").exists()
    # A and B distil nothing: the full preset's teacher needs no file for them (the run goes on to its data)
    with pytest.raises(DataStep):
        recipe.main(["--preset", "full", "--variant", "B", "--out", str(tmp_path / "run")])


def _generator_arguments(monkeypatch, tmp_path, argv: list[str]) -> dict:
    """The keyword arguments (and ``root``) the toys recipe's smoke preset with ``argv`` hands the dataset
    generator; the run stops there."""
    asked = {}

    class Stop(Exception):
        pass

    def generate(root, **kwargs):
        asked.update(kwargs, root=root)
        raise Stop

    monkeypatch.setattr(engine, "ensure_synthetic_dataset", generate)
    with pytest.raises(Stop):
        load_recipe("train_toysad").main(["--preset", "smoke", *argv, "--out", str(tmp_path / "run")])
    return asked


def test_synthetic_background_names_its_cache_and_reaches_the_generator(monkeypatch, tmp_path):
    recipe = load_recipe("train_partsad")
    monkeypatch.setenv("ODDSPARSE_CACHE", str(tmp_path))
    name = lambda *argv: recipe.synthetic_root(recipe.parse_config(list(argv)), "toys").name  # noqa: E731
    assert name("--synthetic_background", "gradient") == name()  # the default: the cache of earlier runs
    assert name("--synthetic_background", "environment") == f"toys-128px-1200-seed0-o3-6-v12-env-g{recipe.GENERATOR_VERSION}"
    with pytest.raises(SystemExit):
        recipe.parse_config(["--synthetic_background", "hdri"])
    asked = _generator_arguments(monkeypatch, tmp_path, ["--synthetic_background", "environment"])
    assert asked["background"] == "environment" and asked["root"].name.endswith(f"-env-g{recipe.GENERATOR_VERSION}")


def test_synthetic_categories_name_their_cache_and_reach_the_generator(monkeypatch, tmp_path):
    recipe = load_recipe("train_partsad")
    monkeypatch.setenv("ODDSPARSE_CACHE", str(tmp_path))
    name = lambda *argv: recipe.synthetic_root(recipe.parse_config(list(argv)), "toys").name  # noqa: E731
    from oddsparse.data.synth.shapes import TOY_CATEGORIES

    assert name("--synthetic_categories", ",".join(TOY_CATEGORIES)) == name()  # the default: earlier caches
    flat = name("--synthetic_categories", "+banana,turtle,skateboard")
    assert flat.startswith("toys-128px-1200-seed0-o3-6-v12-c13-") and flat.endswith(f"-g{recipe.GENERATOR_VERSION}")
    assert name("--synthetic_categories", "banana,turtle") != name("--synthetic_categories", "turtle,banana")
    with pytest.raises(SystemExit):
        recipe.parse_config(["--synthetic_categories", "duck,gear"])
    asked = _generator_arguments(monkeypatch, tmp_path, ["--synthetic_categories", "+banana"])
    assert asked["categories"] == (*TOY_CATEGORIES, "banana") and "-c11-" in asked["root"].name
    with pytest.raises(SystemExit, match="the parts family has none"):
        recipe.main(["--preset", "smoke", "--synthetic_categories", "banana", "--out", str(tmp_path / "parts")])


def test_box_source_reaches_the_training_scenes(monkeypatch, tmp_path):
    """--box_source observed: the training split reads observed GT boxes (labels, box-head targets)."""
    recipe = load_recipe("train_partsad")
    assert recipe.parse_config([]).box_source == "metadata"
    with pytest.raises(SystemExit):
        recipe.parse_config(["--box_source", "tight"])
    monkeypatch.setenv("ODDSPARSE_CACHE", str(tmp_path / "cache"))
    asked = {}

    class Stop(Exception):
        pass

    def dataset(root, split, **kwargs):
        asked.update(kwargs, split=split)
        raise Stop

    monkeypatch.setattr(engine, "ensure_synthetic_dataset", lambda root, **kwargs: None)
    monkeypatch.setattr(recipe, "SceneDataset", dataset)
    with pytest.raises(Stop):
        recipe.main(["--preset", "smoke", "--box_source", "observed", "--out", str(tmp_path / "run")])
    assert asked["split"] == "train" and asked["box_source"] == "observed"


def test_box_head_inputs_option_builds_a_geometry_head():
    recipe = load_recipe("train_partsad")
    assert recipe.model_kwargs(recipe.parse_config([]))[1]["box_head_inputs"] == "all"
    _, detector_kwargs = recipe.model_kwargs(recipe.parse_config(["--box_head_inputs", "geometry"]))
    assert detector_kwargs["box_head_inputs"] == "geometry"
    with pytest.raises(SystemExit):
        recipe.parse_config(["--box_head_inputs", "colour"])


def test_box_head_size_input_option_reaches_the_detector():
    recipe = load_recipe("train_partsad")
    assert recipe.model_kwargs(recipe.parse_config([]))[1]["box_head_size_input"] is False
    scene_kwargs, detector_kwargs = recipe.model_kwargs(recipe.parse_config(["--box_head_size_input"]))
    assert detector_kwargs["box_head_size_input"] is True
    head = build_detector(scene_kwargs, detector_kwargs).box_head
    assert head.size_input and head.size_unit == recipe.parse_config([]).voxel_size


def test_box_delta_scale_option_reaches_the_detector():
    recipe = load_recipe("train_partsad")
    assert recipe.model_kwargs(recipe.parse_config([]))[1]["box_delta_scale"] == 1.0
    scene_kwargs, detector_kwargs = recipe.model_kwargs(recipe.parse_config(["--box_delta_scale", "0.5"]))
    assert detector_kwargs["box_delta_scale"] == 0.5
    assert build_detector(scene_kwargs, detector_kwargs).box_delta_scale == 0.5
    with pytest.raises(SystemExit):
        recipe.parse_config(["--box_delta_scale", "-0.5"])  # -1 alone asks stage 2b to choose
    assert recipe.model_kwargs(recipe.parse_config(["--box_delta_scale", "-1"]))[1]["box_delta_scale"] == 1.0


def test_box_delta_scale_chosen_by_stage_2b(parts_smoke, tmp_path, monkeypatch, capsys):
    """``--box_delta_scale -1``: after stage 2b a probe head, new and trained as 1b on the proposals 2b trained on,
    scores the held-out final-box recall of each scale; the highest wins (ties: the larger scale), final.pt
    carries it, the detector's own head is not the probe's, and a resumed run keeps the choice."""
    from oddsparse.models.box_head import BoxHead

    recipe = load_recipe("train_partsad")
    options = ["--preset", "smoke", "--density_threshold", "-1", "--carve_from_gt_stage2", "--no-evaluate",
               "--box_delta_scale", "-1", "--box_head_refresh_steps", "4", "--seed", "2"]
    # the adoption's two recalls (new head, stage-2 head: equal, so the stage-2 head stays), then the scales'
    measured = iter([0.5, 0.5, 0.1, 0.3, 0.6, 0.6, 0.2])
    monkeypatch.setattr(engine, "box_recall_on_cache", lambda *args, **kwargs: {"recall": next(measured)})
    starts, train = [], engine.train_box_head_on_cache

    def spy(detector, cache, **kwargs):
        starts.append(({k: v.clone() for k, v in detector.box_head.state_dict().items()}, kwargs["steps"]))
        return train(detector, cache, **kwargs)

    monkeypatch.setattr(engine, "train_box_head_on_cache", spy)
    out = tmp_path / "auto"
    recipe.main([*options, "--out", str(out)])
    assert next(measured, None) is None  # every scripted recall read
    assert [steps for _, steps in starts] == [2, 4, 2]  # 1b, 2b, the probe (1b's length in the smoke preset)
    head = load_checkpoint(out / "stage2.pt")["detector_kwargs"]
    torch.manual_seed(2)
    new = BoxHead(starts[2][0]["cnn.0.weight"].shape[1], resolution=head["box_head_resolution"],
                  channels=starts[2][0]["cnn.0.weight"].shape[0]).state_dict()
    assert all(torch.equal(starts[2][0][k], new[k]) for k in new)  # the probe starts new
    final, refresh = load_checkpoint(out / "final.pt"), load_checkpoint(out / "box_head_refresh.pt")
    assert final["detector_kwargs"]["box_delta_scale"] == 0.75 == refresh["detector_kwargs"]["box_delta_scale"]
    assert load_detector(out / "final.pt")[0].box_delta_scale == 0.75
    assert refresh["validation"]["delta_scale_recalls"] == {"0": 0.1, "0.25": 0.3, "0.5": 0.6, "0.75": 0.6, "1": 0.2}
    assert not refresh["validation"]["adopted"]
    stage2 = load_checkpoint(out / "stage2.pt")["model"]
    assert all(torch.equal(final["model"][k], stage2[k]) for k in stage2)  # the probe's head is not kept
    assert final["config"]["box_delta_scale"] == -1.0
    monkeypatch.undo()

    def untouched(*args, **kwargs):
        raise AssertionError("a finished stage 2b was trained again")

    monkeypatch.setattr(engine, "train_box_head_on_cache", untouched)
    (out / "final.pt").unlink()
    recipe.main([*options, "--out", str(out)])
    assert load_checkpoint(out / "final.pt")["detector_kwargs"]["box_delta_scale"] == 0.75
    monkeypatch.undo()
    shutil.rmtree(out)
    # a folder whose 2b ran without -1: resumed with it, the stored scale stays, with a warning naming the file
    plain = tmp_path / "plain"
    recipe.main([*options[:6], *options[8:], "--out", str(plain)])  # without --box_delta_scale -1
    assert load_checkpoint(plain / "box_head_refresh.pt")["validation"]["delta_scale_recalls"] is None  # 2b held out
    capsys.readouterr()
    recipe.main([*options, "--out", str(plain)])
    assert f"{plain / 'box_head_refresh.pt'} was trained without --box_delta_scale -1" in capsys.readouterr().err
    assert load_checkpoint(plain / "final.pt")["detector_kwargs"]["box_delta_scale"] == 1.0
    shutil.rmtree(plain)
    for bad in (["--box_delta_scale", "-2"], ["--box_delta_scale", "-1", "--box_head_refresh_holdout", "0"],
                ["--box_delta_scale", "-1", "--box_head_refresh_steps", "0"]):
        with pytest.raises(SystemExit):
            recipe.parse_config(bad)


def test_stage_2b_fit_all_trains_on_every_scene_and_the_probe_on_the_rest(parts_smoke, tmp_path, monkeypatch):
    """``--box_head_refresh_fit all``: 2b's new head trains on the proposals of every training scene, without a
    validation set, for all its steps and is adopted; the held-out scenes serve only the probe of
    ``--box_delta_scale -1``, which trains on the others (the two sets split 2b's scenes)."""
    from oddsparse.models.box_head import BoxHead

    recipe = load_recipe("train_partsad")
    measured = iter([0.2, 0.7, 0.4, 0.1, 0.0])  # the probe's held-out recalls at 0, 0.25, ..., 1: 0.25 wins
    monkeypatch.setattr(engine, "box_recall_on_cache", lambda *args, **kwargs: {"recall": next(measured)})
    calls, train = [], engine.train_box_head_on_cache

    def spy(detector, cache, **kwargs):
        calls.append(dict(start={k: v.clone() for k, v in detector.box_head.state_dict().items()},
                          scenes=set(torch.unique(cache.scene).tolist()), size=len(cache), steps=kwargs["steps"],
                          validation=kwargs.get("validation")))
        return train(detector, cache, **kwargs)

    monkeypatch.setattr(engine, "train_box_head_on_cache", spy)
    out = tmp_path / "all"
    recipe.main(["--preset", "smoke", "--density_threshold", "-1", "--carve_from_gt_stage2", "--no-evaluate",
                 "--box_delta_scale", "-1", "--box_head_refresh_steps", "4", "--box_head_refresh_init", "fresh",
                 "--box_head_refresh_fit", "all", "--seed", "2", "--out", str(out)])
    assert next(measured, None) is None  # only the probe's five recalls were read (no adoption rule)
    first_b, refit, probe = calls
    assert [c["steps"] for c in calls] == [2, 4, 2] and refit["validation"] is None
    record = load_checkpoint(out / "box_head_refresh.pt")["validation"]
    held = set(record["held_out_scenes"])
    assert held and held <= refit["scenes"] and probe["scenes"] == refit["scenes"] - held
    assert probe["size"] < refit["size"]
    assert (record["fit"], record["init"], record["adopted"], record["best_step"]) == ("all", "fresh", True, 4)
    assert record["losses"] == [] and record["delta_scale_recalls"]["0.25"] == 0.7
    head = load_checkpoint(out / "stage2.pt")["detector_kwargs"]
    torch.manual_seed(2)
    new = BoxHead(refit["start"]["cnn.0.weight"].shape[1], resolution=head["box_head_resolution"],
                  channels=refit["start"]["cnn.0.weight"].shape[0]).state_dict()
    assert all(torch.equal(refit["start"][k], new[k]) for k in new)  # 2b starts from a new head
    final, stage2 = load_checkpoint(out / "final.pt"), load_checkpoint(out / "stage2.pt")
    assert final["detector_kwargs"]["box_delta_scale"] == 0.25
    heads = [k for k in stage2["model"] if k.startswith("box_head.")]
    assert any(not torch.equal(final["model"][k], stage2["model"][k]) for k in heads)  # the trained head is adopted
    assert all(torch.equal(final["model"][k], stage2["model"][k]) for k in stage2["model"] if k not in heads)
    with pytest.raises(SystemExit):
        recipe.parse_config(["--box_head_refresh_fit", "every"])


def test_a_fresh_stage_2b_head_shorter_than_stage_1b_is_warned_of(capsys):
    """A new 2b head with fewer steps than 1b's head had (the default 500 against 1500) is warned of, naming the
    option that fixes it; a long enough one, or 2b training the stage-2 head on, is not."""
    recipe = load_recipe("train_partsad")
    cfg = recipe.parse_config(["--box_head_refresh_init", "fresh"])
    assert (cfg.box_head_refresh_steps, cfg.box_head_steps) == (500, 1500)
    assert "pass --box_head_refresh_steps 1500" in capsys.readouterr().err
    for argv in (["--box_head_refresh_init", "fresh", "--box_head_refresh_steps", "1500"],
                 ["--box_head_refresh_init", "fresh", "--box_head_refresh_steps", "0"], [],
                 ["--preset", "smoke", "--box_head_refresh_init", "fresh"]):
        recipe.parse_config(argv)
        assert "warning" not in capsys.readouterr().err, argv


def test_recipe_warnings_come_from_the_main_process_only(capsys, monkeypatch):
    """Every process of a torchrun run parses the options: the warning is printed by rank 0 only."""
    recipe = load_recipe("train_partsad")
    monkeypatch.setenv("RANK", "1")
    recipe.parse_config(["--box_head_refresh_init", "fresh"])
    assert "warning" not in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    recipe.parse_config(["--box_head_refresh_init", "fresh"])
    assert "pass --box_head_refresh_steps 1500" in capsys.readouterr().err


def test_word_options_are_argparse_choices(capsys):
    """Every word-valued Config field refuses other words at parse time, naming the option and the words it
    takes; every preset's value is one of them."""
    recipe = load_recipe("train_partsad")
    for name, words in recipe.CHOICES.items():
        with pytest.raises(SystemExit):
            recipe.parse_config([f"--{name}", "nonsense"])
        assert f"argument --{name}: invalid choice: 'nonsense'" in capsys.readouterr().err
        for preset in recipe.PRESETS:
            assert getattr(recipe.parse_config(["--preset", preset]), name) in words, (preset, name)
        assert getattr(recipe.parse_config([f"--{name}", words[-1]]), name) == words[-1]
    assert recipe.parse_config(["--variant", "A"]).matcher_distance_input is False


def test_distance_anchor_and_difference_options_reach_the_detector(capsys):
    """``--matcher_distance_anchor`` is off by default, reaches the detector's kwargs (so the checkpoint builds
    the same matcher), is dropped for A with the distance input, and is refused without the distance input."""
    recipe = load_recipe("train_partsad")
    assert recipe.model_kwargs(recipe.parse_config([]))[1]["matcher_distance_anchor"] is False
    cfg = recipe.parse_config(["--preset", "smoke", "--matcher_distance_anchor"])
    detector = build_detector(*recipe.model_kwargs(cfg))
    assert detector.matcher.anchor is not None and detector.matcher.anchor.in_features == 3
    assert recipe.parse_config(["--variant", "A", "--matcher_distance_anchor"]).matcher_distance_anchor is False
    with pytest.raises(SystemExit):
        recipe.parse_config(["--matcher_distance_anchor", "--no-matcher_distance_input"])
    assert "--matcher_distance_anchor scores the distance inputs" in capsys.readouterr().err
    # --matcher_difference_input likewise: off by default, the head's CNN reads 3 more channels, dropped for A
    assert recipe.model_kwargs(recipe.parse_config([]))[1]["matcher_difference_input"] is False
    plain = build_detector(*recipe.model_kwargs(recipe.parse_config(["--preset", "smoke"])))
    reading = build_detector(*recipe.model_kwargs(recipe.parse_config(["--preset", "smoke", "--matcher_difference_input"])))
    assert reading.matcher.head.cnn[0].in_channels == plain.matcher.head.cnn[0].in_channels + 3
    assert recipe.parse_config(["--variant", "A", "--matcher_difference_input"]).matcher_difference_input is False
    messages = build_detector(*recipe.model_kwargs(recipe.parse_config(["--preset", "smoke",
                                                                        "--matcher_difference_messages"])))
    assert all(block.difference_messages for block in messages.matcher.blocks)
    assert not any(block.difference_messages for block in plain.matcher.blocks)
    assert recipe.parse_config(["--variant", "A", "--matcher_difference_messages"]).matcher_difference_messages is False
