"""recipes/report_resolution.py: oracle volumes against the solids' own volumes, a shrunk instance
ranked first, and the script end to end (resumable, settings checked)."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

import torch

from recipe_loader import load_recipe

SETTINGS = {"family": "parts", "seed": 0, "stored_views": 4, "render_size": 64, "views": 4, "fine": 0.005,
            "voxel_sizes": [0.01], "roi_sizes": [16], "image_sizes": [64], "sources": ["solid", "hull", "depth", "observed"],
            "depth_tolerance_px": 0.5}


@pytest.fixture(scope="module")
def module():
    return load_recipe("report_resolution")


@pytest.fixture(scope="module")
def spec():
    from oddsparse.data.synth import generate_scene

    return generate_scene("parts", seed=0, index=3, objects=(3, 3), views=4, size=64)


def test_solid_volumes_fill_the_gt_box_as_the_solid_does(module, spec):
    from oddsparse.data.synth import meshops as mo

    volumes = module.oracle_volumes(spec, SETTINGS)
    solid, hull, depth = volumes["solid/0.01/16"], volumes["hull@64/0.01/16"], volumes["depth@64/0.01/16"]
    assert solid.shape == (3, 1, 16, 16, 16)
    observed = volumes["observed@64/0.01/16"]  # (occupied, observed) fractions: the first is depth@64's
    assert observed.shape == (3, 2, 16, 16, 16) and torch.equal(observed[:, :1], depth)
    assert 0 < observed[:, 1].mean().item() < 1 and observed.min().item() >= 0 and observed.max().item() <= 1 + 1e-6
    box_volume = float(np.prod(spec.normal_extents))
    for index, obj in enumerate(spec.objects):
        true = mo.volume(mo.union([mo.to_manifold(p.mesh) for p in obj.model.parts])) / box_volume
        # the 16^3 cells tile the GT box: their mean occupancy is the solid's share of the box
        assert solid[index].mean().item() == pytest.approx(true, rel=0.08)
        assert hull[index].mean().item() >= solid[index].mean().item() - 0.01  # the hull holds the solid
        # depth carving keeps the solid and carves at least what the silhouettes carve
        assert solid[index].mean().item() - 0.01 <= depth[index].mean().item() <= hull[index].mean().item() + 1e-6
    normal = [i for i, o in enumerate(spec.objects) if not o.is_anomalous]
    assert len(normal) == 2 and abs(spec.objects[normal[0]].yaw - spec.objects[normal[1]].yaw) > 1.0
    a, b = solid[normal[0]], solid[normal[1]]
    # two instances of one shape, placed at different yaws, read the same box-aligned volume (up to the
    # 1 cm voxels' aliasing); read half a turn apart, they do not
    assert ((a - b).abs().sum() / a.sum()).item() < 0.1
    assert ((a - b.flip(1, 2)).abs().sum() / a.sum()).item() > 0.5


def test_a_shrunk_instance_scores_highest(module, spec):
    from oddsparse.data.synth.model import ObjectModel, Part

    model = spec.objects[1].model
    small = ObjectModel(model.shape_name, [Part(p.name, p.mesh.copy().apply_scale(0.75), p.material)
                                           for p in model.parts])
    objects = list(spec.objects)
    objects[1] = replace(objects[1], model=small)
    scores = module.scene_scores(replace(spec, objects=objects), SETTINGS)
    for key in ("solid/0.01/16", "hull@64/0.01/16", "depth@64/0.01/16", "observed@64/0.01/16"):
        assert int(np.argmax(scores[key])) == 1, (key, scores[key])
    settings = {**SETTINGS, "voxel_sizes": [0.02, 0.01]}
    shrunk = module.difference_maps(replace(spec, objects=objects), settings, 1, 0, cells=16)
    assert set(shrunk) == {"solid", "hull@64", "depth@64", "solid at 2 cm"}
    assert shrunk["solid"].shape == (16, 16)
    same = module.difference_maps(spec, settings, 2, 0, cells=16)  # two normal instances: aliasing only
    assert shrunk["solid"].sum() > 5 * same["solid"].sum()


def test_colour_volumes_hold_the_views_colour_on_the_surface_and_find_a_recoloured_instance(module, spec,
                                                                                           monkeypatch):
    """colour@S: mean RGB in [0, 1] where the views show an object's surface, and the shown fraction; an
    instance of the same shape painted another colour scores highest by colour, while the solid cannot tell
    it from the others (same shape: the solid's score of it is no higher than its neighbours' spread)."""
    from oddsparse.data.synth.model import ObjectModel, Part

    settings = {**SETTINGS, "voxel_sizes": [0.02], "roi_sizes": [8],
                "sources": ["solid", "depth", "observed", "colour", "hullcolour"]}
    rendered = []
    colour_maps = module.colour_maps
    monkeypatch.setattr(module, "colour_maps", lambda *a, **k: rendered.append(a[2]) or colour_maps(*a, **k))
    volumes = module.oracle_volumes(spec, settings)
    assert rendered == [64]  # the views rendered once for both colour sources
    monkeypatch.undo()
    colour, depth = volumes["colour@64/0.02/8"], volumes["depth@64/0.02/8"]
    assert colour.shape == (3, 4, 8, 8, 8)
    shown = colour[:, 3]
    assert 0 < shown.mean().item() < 1 and shown.max().item() <= 1 + 1e-6
    assert colour[:, :3].min().item() >= 0 and colour[:, :3].max().item() <= 1 + 1e-6
    assert (colour[:, :3].amax(1) > 0).sum() == (shown > 1e-6).sum()  # colour exactly where some cell shows it
    # the views show colour on the surfaces that depth carving keeps (a cell on one view's surface may lie in
    # front of another view's, at the outlines: pixel aliasing)
    assert (shown * (depth[:, 0] > 0)).sum().item() > 0.85 * shown.sum().item()  # 0.93 here
    hull_colour = volumes["hullcolour@64/0.02/8"]  # RGB and weight (hull occupancy x object pixels' share)
    assert hull_colour.shape == (3, 4, 8, 8, 8)
    weight = hull_colour[:, 3]
    assert hull_colour[:, :3].min().item() >= 0 and hull_colour[:, :3].max().item() <= 1 + 1e-6
    assert weight.min().item() >= 0 and 0.05 < weight.max().item() <= 1 + 1e-6  # 0.084 here: 64 px make a fat hull
    # the hull holds the solid: the cells the solid fills carry weight, and more of it than the empty cells
    solid = volumes["solid/0.02/8"][:, 0]
    assert weight[solid > 0.5].mean().item() > 2 * weight[solid < 0.01].mean().item()
    normal = [i for i, o in enumerate(spec.objects) if not o.is_anomalous]
    model = spec.objects[normal[0]].model
    painted = ObjectModel(model.shape_name, [Part(p.name, p.mesh, replace(p.material, base_color=(0.9, 0.1, 0.6),
                                                                          texture="none"))
                                             for p in model.parts])
    objects = list(spec.objects)
    objects[normal[0]] = replace(objects[normal[0]], model=painted)
    scores = module.scene_scores(replace(spec, objects=objects), settings)
    assert int(np.argmax(scores["colour@64/0.02/8"])) == normal[0], scores["colour@64/0.02/8"]
    # both at once: the paint still stands out beside the equal shapes
    assert int(np.argmax(scores["observed+colour@64/0.02/8"])) == normal[0]
    # read through the carved hull instead of GT depth, too
    assert int(np.argmax(scores["hullcolour@64/0.02/8"])) == normal[0], scores["hullcolour@64/0.02/8"]
    assert module.source_names(settings["sources"], [64]) == ["solid", "depth@64", "observed@64", "colour@64",
                                                               "hullcolour@64", "observed+colour@64"]
    before = module.scene_scores(spec, settings)
    assert scores["solid/0.02/8"] == before["solid/0.02/8"]  # the paint changes no geometry


def test_report_resolution_end_to_end_and_resumable(module, tmp_path):
    def argv(voxel_sizes=("0.04", "0.02"), roi_size="4"):
        return ["--family", "parts", "--scenes", "12", "--limit", "1", "--objects", "3", "3", "--stored-views", "4",
                "--render-size", "64", "--views", "2", "--fine", "0.01", "--voxel-sizes", *voxel_sizes,
                "--roi-sizes", roi_size, "--image-sizes", "32", "--out", str(tmp_path)]

    report = module.main(argv())
    assert report["num_test_scenes"] == 1
    assert set(report["results"]) == {f"{s}/{v}/4" for s in ("solid", "hull@32", "depth@32")
                                         for v in ("0.04", "0.02")}
    assert (tmp_path / "resolution.png").stat().st_size > 0
    assert json.loads((tmp_path / "resolution.json").read_text())["results"] == report["results"]
    scene_file = next((tmp_path / "scenes").iterdir())
    stamp = scene_file.stat().st_mtime_ns
    module.main(argv())
    assert scene_file.stat().st_mtime_ns == stamp  # finished scene kept
    module.main(argv(roi_size="2") + ["--sources", "solid", "depth"])
    assert set(json.loads(scene_file.read_text())["scores"]) == {f"{s}/{v}/2" for s in ("solid", "depth@32")
                                                               for v in ("0.04", "0.02")}  # new settings rescored
    with pytest.raises(SystemExit):
        module.main(argv(voxel_sizes=("0.04", "0.015")))  # 1.5 cm does not divide 4 cm
