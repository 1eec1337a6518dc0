"""Procedural objects and the user-mesh loader of the synthetic generator."""
from __future__ import annotations

import numpy as np
import pytest
import trimesh

from oddsparse.data.synth.model import Material, ObjectModel, Part
from oddsparse.data.synth.shapes import (
    FAMILIES,
    FLAT_TOY_CATEGORIES,
    PART_CATEGORIES,
    SIZE_RANGE,
    TOY_CATEGORIES,
    category_of,
    family_of,
    load_mesh_folder,
    make_shape,
    toy_categories,
)
from reference_shapes import distance_to_surface, inside_any, surface_samples

ALL = [("parts", c) for c in PART_CATEGORIES] + [("toys", c) for c in (*TOY_CATEGORIES, *FLAT_TOY_CATEGORIES)]


def _parts_connected(model: ObjectModel, tol: float) -> bool:
    """Whether the parts form one group, two parts touching when a surface sample of one lies inside
    the other or within ``tol`` of its surface (naive: samples and exact distances, no booleans)."""
    n = len(model.parts)
    samples = [surface_samples(p.mesh, 600, seed=i) for i, p in enumerate(model.parts)]

    def touch(i: int, j: int) -> bool:
        if inside_any([model.parts[j].mesh], samples[i]).any():
            return True
        return bool(distance_to_surface(samples[i], model.parts[j].mesh).min() <= tol)

    seen, frontier = {0}, [0]
    while frontier:
        i = frontier.pop()
        for j in range(n):
            if j not in seen and (touch(i, j) or touch(j, i)):
                seen.add(j)
                frontier.append(j)
    return len(seen) == n


@pytest.mark.parametrize("family,category", ALL)
def test_shape_is_valid(family, category):
    for seed in (0, 1):
        model = make_shape(family, np.random.default_rng(seed), category=category)
        assert family_of(model) == family and category_of(model) == category
        assert model.shape_name.split("_")[2].isdigit() and len(model.shape_name.split("_")) == 3
        assert len(model.parts) >= 1
        if family == "toys":
            assert len(model.parts) >= 3, "toys need several parts for part-level anomalies"
            assert len({p.name for p in model.parts}) == len(model.parts)
        vertices = np.concatenate([p.mesh.vertices for p in model.parts])
        assert np.isfinite(vertices).all()
        low, high = vertices.min(axis=0), vertices.max(axis=0)
        np.testing.assert_allclose(model.bounds(), np.stack([low, high]))
        np.testing.assert_allclose((low + high) / 2, 0.0, atol=1e-9)  # box centre at the origin
        assert SIZE_RANGE[0] - 1e-9 <= (high - low).max() <= SIZE_RANGE[1] + 1e-9
        assert (high - low).min() > 0.01
        assert model.num_faces() < 5000
        assert len(model.mesh().faces) == model.num_faces()
        for part in model.parts:
            assert len(part.mesh.faces) > 0
            assert part.mesh.is_watertight and part.mesh.is_winding_consistent, f"{model.shape_name}/{part.name}"
            assert part.mesh.volume > 0
            assert isinstance(part.material, Material)
            assert all(0.0 <= c <= 1.0 for c in part.material.base_color)
        assert _parts_connected(model, tol=1e-3 * (high - low).max()), f"{model.shape_name} has a floating part"


def test_shapes_are_deterministic_and_varied():
    for family in FAMILIES:
        a = make_shape(family, np.random.default_rng(7))
        b = make_shape(family, np.random.default_rng(7))
        c = make_shape(family, np.random.default_rng(8))
        assert a.shape_name == b.shape_name
        assert len(a.parts) == len(b.parts)
        for pa, pb in zip(a.parts, b.parts):
            assert pa.name == pb.name and pa.material == pb.material
            np.testing.assert_array_equal(pa.mesh.vertices, pb.mesh.vertices)
            np.testing.assert_array_equal(pa.mesh.faces, pb.mesh.faces)
        assert a.shape_name != c.shape_name or not np.array_equal(a.mesh().vertices, c.mesh().vertices)


def test_categories_drawn_when_not_given():
    rng = np.random.default_rng(0)
    drawn = {category_of(make_shape("toys", rng)) for _ in range(40)}
    assert drawn <= set(TOY_CATEGORIES) and len(drawn) >= 6
    assert len(TOY_CATEGORIES) >= 8


def test_flat_toys_are_lower_than_every_default_toy():
    """The flat categories exist to give the generator objects lower than any default one (a real banana is 7 cm
    tall, no default toy is under about 9 cm): height over longest side, 8 shapes of each category."""
    def ratios(category):
        return [float(e[2] / e.max()) for e in
                (make_shape("toys", np.random.default_rng(s), category=category).extents() for s in range(8))]

    default_low = min(min(ratios(c)) for c in TOY_CATEGORIES)
    flat_high = max(max(ratios(c)) for c in FLAT_TOY_CATEGORIES)
    assert flat_high < 0.3 < default_low, (flat_high, default_low)
    for category in FLAT_TOY_CATEGORIES:  # lying on the floor: the height is the shortest side
        for seed in range(4):
            extents = make_shape("toys", np.random.default_rng(seed), category=category).extents()
            assert extents[2] == extents.min()


def test_toy_categories_parses_lists_and_names_bad_ones():
    assert toy_categories(None) is None and toy_categories("") is None and toy_categories("  ") is None
    assert toy_categories(",".join(TOY_CATEGORIES)) is None  # the default, spelt out: the same dataset
    assert toy_categories(list(TOY_CATEGORIES)) is None
    assert toy_categories("+banana,turtle") == (*TOY_CATEGORIES, "banana", "turtle")
    assert toy_categories("turtle, duck") == ("turtle", "duck")  # the order is kept: it draws the scenes
    assert toy_categories(("car", "banana")) == ("car", "banana")
    with pytest.raises(ValueError, match=r"categories: unknown toy category 'gear'"):
        toy_categories("duck,gear")
    with pytest.raises(ValueError, match=r"categories: 'duck' given more than once"):
        toy_categories("+duck")
    with pytest.raises(ValueError, match="categories: no category given"):
        toy_categories(" , ")
    # make_shape without a category still draws from the default ten only
    rng = np.random.default_rng(3)
    assert {category_of(make_shape("toys", rng)) for _ in range(60)} <= set(TOY_CATEGORIES)


def test_within_category_variation():
    sizes = [make_shape("toys", np.random.default_rng(s), category="car").extents() for s in range(5)]
    ratios = {round(float(e[1] / e[0]), 3) for e in sizes}
    assert len(ratios) >= 4  # proportions vary, not just the scale


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="family"):
        make_shape("animals", np.random.default_rng(0))
    with pytest.raises(ValueError, match="category"):
        make_shape("toys", np.random.default_rng(0), category="gear")
    with pytest.raises(ValueError, match="roughness"):
        Material((0.5, 0.5, 0.5), 1.5)
    with pytest.raises(ValueError, match="base_color"):
        Material((0.5, 0.5), 0.5)
    with pytest.raises(ValueError, match="no parts"):
        ObjectModel("x", [])


def _two_boxes() -> trimesh.Trimesh:
    a = trimesh.creation.box((1.0, 1.0, 1.0))
    b = trimesh.creation.box((0.5, 0.5, 2.0))
    b.apply_translation((3.0, 0.0, 0.5))
    return trimesh.util.concatenate([a, b])


def test_load_mesh_folder(tmp_path):
    _two_boxes().export(tmp_path / "a_blocks.obj")
    trimesh.creation.icosphere(subdivisions=2, radius=2.0).export(tmp_path / "b_ball.stl")
    trimesh.creation.cylinder(radius=1.0, height=4.0).export(tmp_path / "c_can.ply")
    scene = trimesh.Scene()
    scene.add_geometry(trimesh.creation.box((1, 1, 1)), geom_name="seat", node_name="seat")
    leg = trimesh.creation.cylinder(radius=0.1, height=1.0)
    leg.apply_translation((0.0, 0.0, -1.0))
    scene.add_geometry(leg, geom_name="leg", node_name="leg")
    scene.export(tmp_path / "d_stool.glb")
    (tmp_path / "notes.txt").write_text("not a mesh")

    models = load_mesh_folder(tmp_path, size=0.3)
    assert [m.shape_name for m in models] == ["a-blocks", "b-ball", "c-can", "d-stool"]
    blocks, ball, can, stool = models
    assert len(blocks.parts) == 2  # connected components
    scale = 0.3 / 3.75  # the two boxes span 3.75 file units along x
    assert sorted(round(float(p.mesh.volume / scale**3), 3) for p in blocks.parts) == [0.5, 1.0]
    assert len(ball.parts) == 1 and len(can.parts) == 1
    assert sorted(p.name for p in stool.parts) == ["leg", "seat"]  # mesh groups
    for model in models:
        bounds = model.bounds()
        np.testing.assert_allclose((bounds[0] + bounds[1]) / 2, 0.0, atol=1e-9)
        assert abs((bounds[1] - bounds[0]).max() - 0.3) < 1e-9
        for part in model.parts:
            assert isinstance(part.material, Material)
    np.testing.assert_allclose(can.extents(), [0.15, 0.15, 0.3], atol=0.003)  # z stays up by default

    upright = load_mesh_folder(tmp_path, size=None, up="y")
    np.testing.assert_allclose(upright[2].extents(), [2.0, 4.0, 2.0], atol=0.05)  # file's y axis became z
    np.testing.assert_allclose(upright[1].extents().max(), 4.0, atol=1e-6)  # size=None keeps the units


def test_load_mesh_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="no mesh files"):
        load_mesh_folder(tmp_path)
    with pytest.raises(ValueError, match="not a folder"):
        load_mesh_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="up"):
        trimesh.creation.box().export(tmp_path / "x.stl")
        load_mesh_folder(tmp_path, up="x")


def test_part_requires_faces():
    with pytest.raises(ValueError, match="no faces"):
        Part("empty", trimesh.Trimesh(), Material((0, 0, 0), 0.5))
