"""Anomalous twins: every type changes what it should, passes its quality checks, and is deterministic."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import trimesh

from oddsparse.data.synth.anomalies import (
    ANOMALY_TYPES,
    FAMILY_ANOMALY_TYPES,
    REGION_POINTS,
    Anomaly,
    make_anomaly,
)
from oddsparse.data.synth.model import ObjectModel
from oddsparse.data.synth.shapes import load_mesh_folder, make_shape
from reference_shapes import distance_to_surface, hausdorff, inside_any, occupied_fraction, surface_samples

GEOMETRIC = tuple(k for k in ANOMALY_TYPES if k != "disc")
# a toy with many parts for every type, and the published parts types on a mechanical part
CASES = [("toys", "robot", kind) for kind in ANOMALY_TYPES] + [
    ("toys", "duck", "frac"), ("toys", "table", "miss"), ("toys", "car", "tran"), ("toys", "snowman", "rota"),
    ("parts", "flange", "bump"), ("parts", "gear", "crack"), ("parts", "bracket", "frac"), ("parts", "block", "diff"),
    ("parts", "plate", "defr"),
]


@lru_cache(maxsize=None)
def _normal(family: str, category: str) -> ObjectModel:
    return make_shape(family, np.random.default_rng(3), category=category)


@lru_cache(maxsize=None)
def _anomaly(family: str, category: str, kind: str, seed: int = 11) -> Anomaly:
    return make_anomaly(_normal(family, category), kind, np.random.default_rng(seed), family=family)


def _size(model: ObjectModel) -> float:
    return float(model.extents().max())


@pytest.mark.parametrize("family,category,kind", CASES)
def test_anomaly_changes_its_twin(family, category, kind):
    normal = _normal(family, category)
    anomaly = _anomaly(family, category, kind)
    model = anomaly.model
    size = _size(normal)
    assert anomaly.kind == kind
    assert model.shape_name == normal.shape_name
    assert anomaly.region_points.shape == (REGION_POINTS, 3) and np.isfinite(anomaly.region_points).all()
    if kind == "disc":
        assert [p.name for p in model.parts] == [p.name for p in normal.parts]
        changed = []
        for a, b in zip(model.parts, normal.parts):
            np.testing.assert_array_equal(a.mesh.vertices, b.mesh.vertices)
            np.testing.assert_array_equal(a.mesh.faces, b.mesh.faces)
            if a.material != b.material:
                changed.append((a, b))
        assert len(changed) == 1
        recoloured, before = changed[0]
        assert np.linalg.norm(np.subtract(recoloured.material.base_color, before.material.base_color)) >= 0.3
        # region points lie on the recoloured part
        assert distance_to_surface(anomaly.region_points, recoloured.mesh).max() < 1e-6
        return
    # geometry changed by more than a tolerance (exact point-to-triangle distances, no booleans)
    distance = hausdorff(model.mesh(), normal.mesh())
    assert distance > 0.02 * size, f"{kind}: Hausdorff {distance / size:.4f} of the size"
    # the object still rests on the floor of the normal shape's frame
    assert abs(model.bounds()[0, 2] - normal.bounds()[0, 2]) <= 0.003 * size
    # region points lie on one of the two surfaces, and many of them away from the other one
    points = anomaly.region_points
    to_normal = distance_to_surface(points, normal.mesh())
    to_anomalous = distance_to_surface(points, model.mesh())
    assert (np.minimum(to_normal, to_anomalous) < 1e-3 * size).mean() > 0.95
    assert (np.maximum(to_normal, to_anomalous) > 0.003 * size).mean() > 0.3


def test_frac_removes_ten_to_ninety_percent():
    for category, seed in (("duck", 1), ("mug", 2), ("chair", 3)):
        normal = _normal("toys", category)
        anomaly = make_anomaly(normal, "frac", np.random.default_rng(seed), family="toys")
        box = normal.bounds()
        full = occupied_fraction([p.mesh for p in normal.parts], box, seed=seed)
        kept = occupied_fraction([p.mesh for p in anomaly.model.parts], box, seed=seed)
        removed = 1.0 - kept / full
        assert 0.1 - 0.03 <= removed <= 0.9 + 0.03, f"{category}: removed {removed:.3f}"
        # nothing is added by a fracture: anomalous surface samples lie inside or on the normal object
        samples = surface_samples(anomaly.model.mesh(), 500, seed=seed)
        on_or_in = inside_any([p.mesh for p in normal.parts], samples) | (
            distance_to_surface(samples, normal.mesh()) < 1e-6 * _size(normal) + 1e-9
        )
        assert on_or_in.mean() > 0.99


def test_crack_is_thin():
    normal = _normal("toys", "robot")
    anomaly = _anomaly("toys", "robot", "crack")
    box = normal.bounds()
    full = occupied_fraction([p.mesh for p in normal.parts], box, count=40000)
    kept = occupied_fraction([p.mesh for p in anomaly.model.parts], box, count=40000)
    assert 0.0 <= 1.0 - kept / full < 0.1  # a cut, not a fracture


def _moved_part(normal: ObjectModel, model: ObjectModel) -> int:
    moved = [i for i, (a, b) in enumerate(zip(model.parts, normal.parts))
             if a.mesh.vertices.shape != b.mesh.vertices.shape or not np.allclose(a.mesh.vertices, b.mesh.vertices)]
    assert len(moved) == 1, f"expected one moved part, got {moved}"
    return moved[0]


@pytest.mark.parametrize("family,category,kind", [("toys", "robot", "tran"), ("toys", "robot", "rota"),
                                                  ("toys", "car", "tran"), ("toys", "snowman", "rota")])
def test_moved_part_stays_attached(family, category, kind):
    normal = _normal(family, category)
    model = _anomaly(family, category, kind).model
    index = _moved_part(normal, model)
    part = model.parts[index]
    rest = [p.mesh for i, p in enumerate(model.parts) if i != index]
    samples = surface_samples(part.mesh, 2000, seed=1)
    touching = inside_any(rest, samples).any() or min(distance_to_surface(samples, m).min() for m in rest) < 0.005 * _size(normal)
    assert touching, f"{kind}: moved part {part.name} floats"
    # it is a rigid motion: same edge lengths, area and volume
    before = normal.parts[index].mesh
    np.testing.assert_allclose(np.sort(part.mesh.edges_unique_length), np.sort(before.edges_unique_length), atol=1e-9)
    np.testing.assert_allclose([part.mesh.area, part.mesh.volume], [before.area, before.volume], rtol=1e-9)


def _volume_change(normal: ObjectModel, model: ObjectModel, count: int = 30000, seed: int = 0) -> tuple[float, float]:
    """Monte Carlo (added, removed) volume, each as a fraction of the normal object's, over a box holding both."""
    box = np.stack([np.minimum(normal.bounds()[0], model.bounds()[0]), np.maximum(normal.bounds()[1], model.bounds()[1])])
    points = np.random.default_rng(seed).uniform(box[0], box[1], size=(count, 3))
    before = inside_any([p.mesh for p in normal.parts], points)
    after = inside_any([p.mesh for p in model.parts], points)
    return float((after & ~before).sum() / before.sum()), float((before & ~after).sum() / before.sum())


@pytest.mark.parametrize("family,category", [("toys", "robot"), ("parts", "flange")])
def test_bump_adds_a_little_material_near_its_region_and_removes_none(family, category):
    normal, anomaly = _normal(family, category), _anomaly(family, category, "bump")
    added, removed = _volume_change(normal, anomaly.model)
    assert 0.002 < added < 0.08 and removed < 0.002, (added, removed)
    # the added material is one local cap: anomalous surface points off the normal surface lie near the region
    samples = surface_samples(anomaly.model.mesh(), 3000, seed=2)
    new = samples[distance_to_surface(samples, normal.mesh()) > 0.01 * _size(normal)]
    assert len(new) > 10
    centre = anomaly.region_points.mean(axis=0)
    assert np.linalg.norm(new - centre, axis=1).max() < 0.4 * _size(normal)


@pytest.mark.parametrize("family,category", [("toys", "robot"), ("parts", "plate")])
def test_deformation_moves_much_of_the_volume(family, category):
    """A bend or twist warps the whole object: its volume moves (the generator asks 8 %), unlike a local cap."""
    normal, anomaly = _normal(family, category), _anomaly(family, category, "defr")
    added, removed = _volume_change(normal, anomaly.model)
    assert added + removed > 0.06, (added, removed)
    # every part moved, not one
    assert all(not np.allclose(a.mesh.bounds, b.mesh.bounds) for a, b in zip(anomaly.model.parts, normal.parts))


@pytest.mark.parametrize("family,category,kind", [("toys", "robot", "tran"), ("toys", "robot", "rota"),
                                                  ("toys", "car", "tran"), ("toys", "snowman", "rota")])
def test_moved_part_is_turned_or_slid_as_named(family, category, kind):
    """rota tilts a part (its inertia tensor about its centre of mass turns with it, I' = R I R^T); tran slides it
    by 20-50 % of its size without turning it (the same tensor; the re-meshed part keeps no vertex order to fit)."""
    normal = _normal(family, category)
    model = _anomaly(family, category, kind).model
    index = _moved_part(normal, model)
    before, after = normal.parts[index].mesh, model.parts[index].mesh
    inertia, turned = before.moment_inertia, after.moment_inertia
    change = np.linalg.norm(turned - inertia) / np.linalg.norm(inertia)
    np.testing.assert_allclose(np.linalg.eigvalsh(turned), np.linalg.eigvalsh(inertia), rtol=1e-6)  # rigid
    shift = np.linalg.norm(after.center_mass - before.center_mass)
    if kind == "rota":
        assert change > 0.05, change
    else:
        assert change < 1e-6 and shift > 0.15 * before.extents.max(), (change, shift)


def test_missing_part_is_plausible():
    for category in ("table", "robot", "snowman"):
        normal = _normal("toys", category)
        model = _anomaly("toys", category, "miss").model
        names = [p.name for p in normal.parts]
        kept = [p.name for p in model.parts]
        assert len(kept) == len(names) - 1 and set(kept) < set(names)
        removed = (set(names) - set(kept)).pop()
        volumes = {p.name: p.mesh.volume for p in normal.parts}
        assert volumes[removed] < max(volumes.values()), "the largest part must not go missing"


def test_deterministic_given_rng():
    normal = _normal("toys", "car")
    for kind in ("frac", "tran", "bump", "defr", "diff"):
        a = make_anomaly(normal, kind, np.random.default_rng(5), family="toys")
        b = make_anomaly(normal, kind, np.random.default_rng(5), family="toys")
        assert len(a.model.parts) == len(b.model.parts)
        for pa, pb in zip(a.model.parts, b.model.parts):
            np.testing.assert_array_equal(pa.mesh.vertices, pb.mesh.vertices)
            assert pa.material == pb.material
        np.testing.assert_array_equal(a.region_points, b.region_points)
    c = make_anomaly(normal, "frac", np.random.default_rng(6), family="toys")
    assert not np.array_equal(c.model.mesh().vertices, make_anomaly(normal, "frac", np.random.default_rng(5),
                                                                    family="toys").model.mesh().vertices)


def test_diff_is_similar_but_different():
    normal = _normal("parts", "block")
    model = _anomaly("parts", "block", "diff").model
    size = _size(normal)
    assert abs(_size(model) - size) < 1e-9  # scaled to the normal's size
    a = surface_samples(normal.mesh(), 3000, seed=0)
    b = surface_samples(model.mesh(), 3000, seed=1)
    chamfer = 0.5 * (distance_to_surface(a, model.mesh()).mean() + distance_to_surface(b, normal.mesh()).mean())
    assert 0.005 * size < chamfer < 0.1 * size


def test_family_defaults_and_errors():
    assert set(FAMILY_ANOMALY_TYPES["toys"]) == {"miss", "disc", "frac", "bump", "rota", "crack", "defr", "tran"}
    assert set(FAMILY_ANOMALY_TYPES["parts"]) >= {"bump", "diff", "crack", "frac"}
    assert set(ANOMALY_TYPES) == {"crack", "frac", "bump", "defr", "tran", "rota", "miss", "disc", "diff"}
    gear = _normal("parts", "gear")  # a single solid part
    with pytest.raises(RuntimeError, match="miss"):
        make_anomaly(gear, "miss", np.random.default_rng(0), family="parts")
    with pytest.raises(ValueError, match="kind"):
        make_anomaly(gear, "dent", np.random.default_rng(0), family="parts")


def test_user_mesh_anomalies(tmp_path):
    body = trimesh.creation.box((2.0, 1.0, 1.0))
    handle = trimesh.creation.cylinder(radius=0.2, height=1.2)
    handle.apply_translation((0.0, 0.0, 1.0))
    trimesh.util.concatenate([body, handle]).export(tmp_path / "thing.obj")
    (model,) = load_mesh_folder(tmp_path)
    for kind in ("frac", "bump", "crack", "miss"):
        anomaly = make_anomaly(model, kind, np.random.default_rng(0), family="toys")
        assert hausdorff(anomaly.model.mesh(), model.mesh()) > 0.02 * _size(model), kind
