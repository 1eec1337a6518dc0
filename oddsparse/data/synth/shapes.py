"""Procedural multi-part objects of the synthetic generator, and a loader for user meshes.

Two families:

- ``"parts"``: mechanical parts in the spirit of the ABC CAD models (brackets, flanges, shafts with
  collars, plates with holes and slots, pipe fittings, gears, pulleys, pocketed blocks, clevises),
  built from boxes, cylinders and tori with holes and fillets by manifold3d booleans.
- ``"toys"``: simple figures and everyday objects composed of primitives, one sub-family per name in
  ``TOY_CATEGORIES`` (the default datasets' ten) and ``FLAT_TOY_CATEGORIES`` (opt-in: objects lying on the
  floor, 2.5-10 cm tall where the default ones are at least 9 cm), each part with its own material.

Every object is returned in its object frame: z up, metres, axis-aligned bounding-box centre at the
origin, longest side in ``SIZE_RANGE``; it rests on the floor when placed at ``z = size_z / 2``.

Example:
    >>> rng = np.random.default_rng(0)
    >>> duck = make_shape("toys", rng, category="duck")
    >>> duck.shape_name.split("_")[:2], [p.name for p in duck.parts][:2]
    (['toys', 'duck'], ['body', 'head'])
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import trimesh

from oddsparse.data.synth import meshops as mo
from oddsparse.data.synth.model import Material, ObjectModel, Part

__all__ = [
    "FAMILIES",
    "TOY_CATEGORIES",
    "FLAT_TOY_CATEGORIES",
    "PART_CATEGORIES",
    "SIZE_RANGE",
    "MESH_SUFFIXES",
    "make_shape",
    "load_mesh_folder",
    "family_of",
    "category_of",
    "toy_categories",
]

FAMILIES = ("parts", "toys")
TOY_CATEGORIES = ("duck", "car", "mug", "robot", "table", "chair", "lamp", "snowman", "mushroom", "rocket")
FLAT_TOY_CATEGORIES = ("banana", "turtle", "skateboard")  # opt-in (see toy_categories): not in the default datasets
PART_CATEGORIES = ("bracket", "flange", "shaft", "plate", "fitting", "gear", "pulley", "block", "clevis")
SIZE_RANGE = (0.18, 0.38)  # longest side of a generated object, metres
MESH_SUFFIXES = (".obj", ".ply", ".glb", ".gltf", ".stl", ".off")

Built = list[tuple[str, mo.Manifold, Material]]


# ----------------------------------------------------------------------------------------- materials
def _color(rng: np.random.Generator, *, hue: float | None = None, sat=(0.55, 0.9), val=(0.55, 0.95)):
    h = rng.uniform(0.0, 1.0) if hue is None else (hue + rng.uniform(-0.03, 0.03)) % 1.0
    s = rng.uniform(*sat)
    v = rng.uniform(*val)
    return tuple(float(c) for c in colorsys.hsv_to_rgb(h, s, v))


def _toy_material(rng: np.random.Generator, *, hue: float | None = None, textured: float = 0.0, **kw) -> Material:
    base = _color(rng, hue=hue, **kw)
    texture = "none"
    texture_color = (0.0, 0.0, 0.0)
    if rng.uniform() < textured:
        texture = str(rng.choice(["stripes", "checker", "noise"]))
        texture_color = tuple(float(np.clip(c * rng.uniform(0.4, 0.7), 0, 1)) for c in base)
    return Material(
        base_color=base,
        roughness=float(rng.uniform(0.3, 0.9)),
        texture=texture,
        texture_color=texture_color,
        texture_scale=float(rng.uniform(0.01, 0.04)),
    )


def _metal_material(rng: np.random.Generator) -> Material:
    kind = rng.uniform()
    if kind < 0.5:  # bare metal greys
        grey = rng.uniform(0.45, 0.8)
        base = (grey, grey * rng.uniform(0.97, 1.0), grey * rng.uniform(0.95, 1.02))
        roughness = rng.uniform(0.15, 0.45)
    elif kind < 0.8:  # anodised / painted
        base = _color(rng, sat=(0.35, 0.75), val=(0.45, 0.85))
        roughness = rng.uniform(0.3, 0.6)
    else:  # brass-like or dark plastic
        base = (0.75, 0.6, 0.3) if rng.uniform() < 0.5 else (0.18, 0.18, 0.2)
        roughness = rng.uniform(0.25, 0.7)
    base = tuple(float(np.clip(c, 0.0, 1.0)) for c in base)
    return Material(base_color=base, roughness=float(roughness))


def _shade(material: Material, factor: float) -> Material:
    """Same material, base colour scaled by ``factor`` (a second part of a similar finish)."""
    base = tuple(float(np.clip(c * factor, 0.0, 1.0)) for c in material.base_color)
    return Material(base, material.roughness, material.texture, material.texture_color, material.texture_scale)


# ------------------------------------------------------------------------------------- parts family
def _holes(points, radius: float, height: float, axis=(0.0, 0.0, 1.0), segments: int = 16) -> mo.Manifold:
    return mo.union([mo.cylinder(radius, height, p, axis, segments) for p in points])


def _bolt(center, axis, radius: float, length: float, head: float) -> mo.Manifold:
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    center = np.asarray(center, dtype=np.float64)
    shank = mo.cylinder(radius, length, center - axis * length / 2, axis, 12)
    hexagon = mo.cylinder(radius * 1.8, head, center + axis * head / 2, axis, 6)
    return shank + hexagon


def _parts_bracket(rng: np.random.Generator) -> Built:
    mat = _metal_material(rng)
    width, depth, height = rng.uniform(0.8, 1.4), rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.1)
    thick = rng.uniform(0.08, 0.14)
    fillet = thick * rng.uniform(0.2, 0.45)
    base = mo.rounded_box((width, depth, thick), fillet, (0, 0, thick / 2))
    wall = mo.rounded_box((width, thick, height), fillet, (0, -depth / 2 + thick / 2, height / 2))
    body = base + wall
    if rng.uniform() < 0.7:  # triangular gussets
        for x in (-width / 2 + thick, width / 2 - thick):
            pts = np.array(
                [[x - thick / 3, -depth / 2 + thick, thick], [x + thick / 3, -depth / 2 + thick, thick]]
                + [[x - thick / 3, -depth / 2 + thick, height * 0.6], [x + thick / 3, -depth / 2 + thick, height * 0.6]]
                + [[x - thick / 3, depth * 0.2, thick], [x + thick / 3, depth * 0.2, thick]]
            )
            body = body + mo.Manifold.hull_points(pts)
    n_holes = int(rng.integers(1, 4))
    hole_r = rng.uniform(0.04, 0.08)
    xs = np.linspace(-width / 2, width / 2, n_holes + 2)[1:-1]
    base_holes = [(x, depth * 0.15, thick / 2) for x in xs]
    wall_holes = [(x, -depth / 2 + thick / 2, height * 0.7) for x in xs]
    body = body - _holes(base_holes, hole_r, thick * 3) - _holes(wall_holes, hole_r, thick * 3, (0, 1, 0))
    parts: Built = [("body", body, mat)]
    if rng.uniform() < 0.6:
        bolt_mat = _shade(_metal_material(rng), 1.0)
        for i, p in enumerate(base_holes):
            bolt = _bolt((p[0], p[1], thick), (0, 0, 1), hole_r * 0.9, thick * 2.5, thick * 0.6)
            parts.append((f"bolt_{i}", bolt, bolt_mat))
    return parts


def _parts_flange(rng: np.random.Generator) -> Built:
    mat = _metal_material(rng)
    radius = 0.5
    thick = rng.uniform(0.08, 0.16)
    hub_r = radius * rng.uniform(0.35, 0.55)
    hub_h = rng.uniform(0.2, 0.45)
    disc = mo.cylinder(radius, thick, (0, 0, thick / 2), segments=48)
    if rng.uniform() < 0.5:  # chamfered rim
        disc = disc ^ mo.cylinder(radius * 1.08, thick, (0, 0, thick / 2), segments=48, radius_top=radius * 0.92)
    hub = mo.cylinder(hub_r, hub_h, (0, 0, thick + hub_h / 2 - 0.01), segments=40)
    fillet = mo.torus(hub_r, thick * 0.25, (0, 0, thick), segments=40, minor_segments=8)
    body = disc + hub + fillet
    bore = mo.cylinder(hub_r * rng.uniform(0.45, 0.75), 4.0, (0, 0, 0), segments=32)
    n_bolts = int(rng.choice([4, 5, 6, 8]))
    circle = (radius + hub_r) / 2 + 0.02
    angles = np.arange(n_bolts) * 2 * np.pi / n_bolts + rng.uniform(0, np.pi)
    pts = [(circle * np.cos(a), circle * np.sin(a), thick / 2) for a in angles]
    body = body - bore - _holes(pts, rng.uniform(0.03, 0.05), thick * 3)
    return [("body", body, mat)]


def _parts_shaft(rng: np.random.Generator) -> Built:
    mat = _metal_material(rng)
    length = 1.0
    n_steps = int(rng.integers(2, 5))
    cuts = np.sort(rng.uniform(-0.35, 0.35, n_steps - 1))
    edges = np.concatenate([[-length / 2], cuts, [length / 2]])
    radii = rng.uniform(0.05, 0.1, n_steps)
    sections = []
    for i in range(n_steps):
        seg_len = edges[i + 1] - edges[i] + 0.002
        center = ((edges[i] + edges[i + 1]) / 2, 0.0, 0.0)
        sections.append(mo.cylinder(radii[i], seg_len, center, (1, 0, 0), 28))
    shaft = mo.union(sections)
    if rng.uniform() < 0.6:  # keyway on the widest section
        i = int(np.argmax(radii))
        key_len = (edges[i + 1] - edges[i]) * 0.6
        cx = (edges[i] + edges[i + 1]) / 2
        shaft = shaft - mo.box((key_len, radii[i] * 0.5, radii[i] * 0.5), (cx, 0, radii[i]))
    parts: Built = [("shaft", shaft, mat)]
    collar_mat = _shade(mat, rng.uniform(0.7, 0.9)) if rng.uniform() < 0.5 else _metal_material(rng)
    for j in range(int(rng.integers(1, 3))):
        i = int(rng.integers(0, n_steps))
        cx = rng.uniform(edges[i] + 0.05, edges[i + 1] - 0.05) if edges[i + 1] - edges[i] > 0.12 else (edges[i] + edges[i + 1]) / 2
        r_in = radii[i] * 0.98
        collar = mo.tube(radii[i] * rng.uniform(1.6, 2.2), r_in, rng.uniform(0.05, 0.09), (cx, 0, 0), (1, 0, 0), 32)
        screw = mo.cylinder(radii[i] * 0.2, radii[i] * 2.5, (cx, 0, radii[i] * 1.7), (0, 0, 1), 10)
        parts.append((f"collar_{j}", collar + screw, collar_mat))
    return parts


def _parts_plate(rng: np.random.Generator) -> Built:
    mat = _metal_material(rng)
    width, depth, thick = 1.0, rng.uniform(0.5, 0.9), rng.uniform(0.05, 0.1)
    plate = mo.rounded_box((width, depth, thick), thick * 0.4, (0, 0, thick / 2))
    nx, ny = int(rng.integers(2, 4)), int(rng.integers(1, 3))
    r = rng.uniform(0.03, 0.06)
    xs = np.linspace(-width / 2, width / 2, nx + 2)[1:-1]
    ys = np.linspace(-depth / 2, depth / 2, ny + 2)[1:-1]
    holes = [(x, y, thick / 2) for x in xs for y in ys]
    plate = plate - _holes(holes, r, thick * 3)
    if rng.uniform() < 0.7:  # slot
        y = depth / 2 - depth * 0.12
        slot_r = r * 0.8
        slot = mo.Manifold.batch_hull(
            [mo.cylinder(slot_r, thick * 3, (x, y, thick / 2), segments=16) for x in (-width * 0.25, width * 0.25)]
        )
        plate = plate - slot
    parts: Built = [("plate", plate, mat)]
    if rng.uniform() < 0.7:  # bosses
        boss_mat = _shade(mat, rng.uniform(0.75, 0.95))
        for j, x in enumerate(rng.choice(xs, size=min(2, len(xs)), replace=False)):
            boss_r = rng.uniform(0.07, 0.11)
            boss_h = rng.uniform(0.08, 0.2)
            y = -depth / 2 + depth * 0.2
            boss = mo.cylinder(boss_r, boss_h, (x, y, thick + boss_h / 2 - 0.005), segments=28)
            boss = boss - mo.cylinder(boss_r * 0.45, boss_h * 3, (x, y, thick + boss_h / 2), segments=16)
            parts.append((f"boss_{j}", boss, boss_mat))
    return parts


def _parts_fitting(rng: np.random.Generator) -> Built:
    mat = _metal_material(rng)
    r_out = rng.uniform(0.1, 0.16)
    r_in = r_out * rng.uniform(0.6, 0.8)
    flange_r = r_out * rng.uniform(1.4, 1.8)
    flange_t = rng.uniform(0.04, 0.07)
    kind = rng.choice(["tee", "elbow", "cross"])
    ends = []
    if kind == "elbow":
        bend = rng.uniform(0.3, 0.45)
        # manifold revolves clockwise seen from +z: turn the arc [-90, 0] degrees into [0, 90]
        solid = mo.torus(bend, r_out, (0, 0, 0), (0, 0, 1), 32, 16, 90.0).rotate((0, 0, 90))
        bore = mo.torus(bend, r_in, (0, 0, 0), (0, 0, 1), 32, 16, 92.0).rotate((0, 0, 91))
        arm = rng.uniform(0.1, 0.25)
        solid = solid + mo.cylinder(r_out, arm, (bend, -arm / 2 + 0.001, 0), (0, 1, 0), 32)
        solid = solid + mo.cylinder(r_out, arm, (-arm / 2 + 0.001, bend, 0), (1, 0, 0), 32)
        bore = bore + mo.cylinder(r_in, arm + 0.4, (bend, -arm / 2, 0), (0, 1, 0), 32)
        bore = bore + mo.cylinder(r_in, arm + 0.4, (-arm / 2, bend, 0), (1, 0, 0), 32)
        ends = [((bend, -arm, 0), (0, 1, 0)), ((-arm, bend, 0), (1, 0, 0))]
    else:
        length = 1.0
        branch = rng.uniform(0.3, 0.5)
        solid = mo.cylinder(r_out, length, (0, 0, 0), (1, 0, 0), 32)
        bore = mo.cylinder(r_in, length + 0.4, (0, 0, 0), (1, 0, 0), 32)
        ends = [((-length / 2, 0, 0), (1, 0, 0)), ((length / 2, 0, 0), (1, 0, 0))]
        signs = (1,) if kind == "tee" else (1, -1)
        for s in signs:
            solid = solid + mo.cylinder(r_out, branch, (0, s * branch / 2, 0), (0, 1, 0), 32)
            bore = bore + mo.cylinder(r_in, branch + 0.2, (0, s * branch / 2 + 0.1, 0), (0, 1, 0), 32)
            ends.append(((0, s * branch, 0), (0, 1, 0)))
    for point, axis in ends:
        point = np.asarray(point, dtype=np.float64)
        solid = solid + mo.cylinder(flange_r, flange_t, point, axis, 32)
    solid = solid - bore
    return [("body", solid, mat)]


def _parts_gear(rng: np.random.Generator) -> Built:
    mat = _metal_material(rng)
    radius = 0.5
    thick = rng.uniform(0.1, 0.22)
    n_teeth = int(rng.integers(10, 21))
    tooth_h = rng.uniform(0.06, 0.1)
    root = radius - tooth_h
    disc = mo.cylinder(root, thick, (0, 0, thick / 2), segments=48)
    tooth_w = 2 * np.pi * root / n_teeth * 0.5
    teeth = []
    for k in range(n_teeth):
        angle = 360.0 * k / n_teeth
        pts = np.array(
            [[root - 0.02, -tooth_w / 2, 0], [root - 0.02, tooth_w / 2, 0], [radius, -tooth_w / 4, 0], [radius, tooth_w / 4, 0]]
        )
        pts = np.concatenate([pts, pts + [0, 0, thick]])
        teeth.append(mo.Manifold.hull_points(pts).rotate((0, 0, angle)))
    gear = mo.union([disc] + teeth)
    hub_r = root * rng.uniform(0.3, 0.45)
    if rng.uniform() < 0.6:
        hub_h = rng.uniform(0.08, 0.2)
        gear = gear + mo.cylinder(hub_r, hub_h, (0, 0, thick + hub_h / 2 - 0.005), segments=32)
    bore_r = hub_r * rng.uniform(0.4, 0.65)
    gear = gear - mo.cylinder(bore_r, 4.0, segments=24) - mo.box((bore_r * 0.5, bore_r * 0.8, 4.0), (bore_r, 0, 0))
    if rng.uniform() < 0.5:  # lightening holes
        n = int(rng.integers(3, 7))
        ring = (root + hub_r) / 2
        hr = min((root - hub_r) * 0.3, ring * np.pi / n * 0.6)
        gear = gear - _holes(
            [(ring * np.cos(a), ring * np.sin(a), thick / 2) for a in np.arange(n) * 2 * np.pi / n], hr, thick * 3, segments=20
        )
    return [("body", gear, mat)]


def _parts_pulley(rng: np.random.Generator) -> Built:
    mat = _metal_material(rng)
    radius = 0.5
    width = rng.uniform(0.15, 0.3)
    depth = rng.uniform(0.06, 0.12)
    bore = rng.uniform(0.06, 0.12)
    n_grooves = int(rng.integers(1, 3))
    profile = [(bore, 0.0), (radius, 0.0)]
    pitch = width / n_grooves
    for g in range(n_grooves):
        z0 = g * pitch
        profile += [(radius, z0 + pitch * 0.15), (radius - depth, z0 + pitch * 0.45), (radius - depth, z0 + pitch * 0.55),
                    (radius, z0 + pitch * 0.85)]
    profile += [(radius, width), (bore, width)]
    body = mo.revolve_profile(np.array(profile), segments=48)
    hub_h = rng.uniform(0.05, 0.15)
    hub = mo.tube(bore * 2.0, bore, hub_h, (0, 0, width + hub_h / 2 - 0.005), segments=32)
    parts: Built = [("body", body, mat), ("hub", hub, _shade(mat, rng.uniform(0.75, 0.95)))]
    return parts


def _parts_block(rng: np.random.Generator) -> Built:
    mat = _metal_material(rng)
    sx, sy, sz = 1.0, rng.uniform(0.5, 0.9), rng.uniform(0.3, 0.6)
    chamfer = rng.uniform(0.02, 0.06)
    block = mo.Manifold.batch_hull(
        [mo.box((sx, sy - 2 * chamfer, sz - 2 * chamfer), (0, 0, sz / 2)),
         mo.box((sx - 2 * chamfer, sy, sz - 2 * chamfer), (0, 0, sz / 2)),
         mo.box((sx - 2 * chamfer, sy - 2 * chamfer, sz), (0, 0, sz / 2))]
    )
    pocket_d = sz * rng.uniform(0.3, 0.6)
    px, py = sx * rng.uniform(0.3, 0.55), sy * rng.uniform(0.35, 0.6)
    pocket = mo.rounded_box((px, py, pocket_d * 2), min(px, py) * 0.2, (rng.uniform(-0.15, 0.15), 0, sz))
    block = block - pocket
    corners = [(sgn_x * sx * 0.38, sgn_y * sy * 0.35, sz / 2) for sgn_x in (-1, 1) for sgn_y in (-1, 1)]
    block = block - _holes(corners, rng.uniform(0.03, 0.05), sz * 3)
    if rng.uniform() < 0.6:  # side bore
        block = block - mo.cylinder(sz * 0.18, sx * 3, (0, 0, sz * 0.35), (1, 0, 0), 24)
    return [("body", block, mat)]


def _parts_clevis(rng: np.random.Generator) -> Built:
    mat = _metal_material(rng)
    width, depth, base_t = 1.0, rng.uniform(0.4, 0.6), rng.uniform(0.08, 0.14)
    ear_t = rng.uniform(0.08, 0.12)
    gap = rng.uniform(0.3, 0.5)
    ear_h = rng.uniform(0.45, 0.7)
    base = mo.rounded_box((width, depth, base_t), base_t * 0.3, (0, 0, base_t / 2))
    body = base
    pin_z = base_t + ear_h - depth / 2
    for s in (-1, 1):
        x = s * (gap / 2 + ear_t / 2)
        ear = mo.Manifold.batch_hull(
            [mo.box((ear_t, depth, 0.02), (x, 0, base_t)), mo.cylinder(depth / 2, ear_t, (x, 0, pin_z), (1, 0, 0), 32)]
        )
        body = body + ear
    pin_r = depth * rng.uniform(0.12, 0.2)
    body = body - mo.cylinder(pin_r * 0.99, width * 2, (0, 0, pin_z), (1, 0, 0), 20)  # press fit: pin touches
    body = body - _holes([(s * width * 0.4, 0, base_t / 2) for s in (-1, 1)], rng.uniform(0.03, 0.05), base_t * 3)
    pin_len = gap + 2 * ear_t + rng.uniform(0.08, 0.16)
    pin = mo.cylinder(pin_r, pin_len, (0, 0, pin_z), (1, 0, 0), 20)
    pin = pin + mo.cylinder(pin_r * 1.6, 0.04, (pin_len / 2, 0, pin_z), (1, 0, 0), 20)
    return [("body", body, mat), ("pin", pin, _metal_material(rng))]


# -------------------------------------------------------------------------------------- toys family
def _toy_duck(rng: np.random.Generator) -> Built:
    body_hue = rng.choice([0.14, 0.15, 0.0, 0.33, 0.6]) if rng.uniform() < 0.8 else rng.uniform()
    body_mat = _toy_material(rng, hue=float(body_hue), textured=0.3)
    if body_hue == 0.0:
        body_mat = Material((0.92, 0.92, 0.9), body_mat.roughness, body_mat.texture, body_mat.texture_color)
    bx, by, bz = rng.uniform(0.45, 0.6), rng.uniform(0.3, 0.4), rng.uniform(0.25, 0.33)
    body = mo.ellipsoid((bx, by, bz), (0, 0, bz), 28)
    head_r = rng.uniform(0.18, 0.24)
    hx, hz = bx * rng.uniform(0.45, 0.65), bz * 2 + head_r * rng.uniform(0.3, 0.7)
    head = mo.sphere(head_r, (hx, 0, hz), 24)
    beak_mat = _toy_material(rng, hue=0.08, sat=(0.8, 1.0), val=(0.8, 1.0))
    beak = mo.ellipsoid((head_r * 0.6, head_r * 0.45, head_r * 0.18), (hx + head_r * 0.95, 0, hz - head_r * 0.15), 16)
    tail = mo.cone(bz * 0.5, bx * 0.45, (-bx * 0.75, 0, bz * 1.15), (-1, 0, 0.8), 16)
    wing_mat = _shade(body_mat, rng.uniform(0.75, 0.9))
    wings = [
        (f"wing_{side}", mo.ellipsoid((bx * 0.55, by * 0.18, bz * 0.45), (-bx * 0.1, s * by * 0.9, bz * 1.1), 16), wing_mat)
        for side, s in (("l", 1), ("r", -1))
    ]
    eye_mat = Material((0.03, 0.03, 0.03), 0.2)
    eyes = mo.union([mo.sphere(head_r * 0.16, (hx + head_r * 0.7, s * head_r * 0.55, hz + head_r * 0.3), 12) for s in (-1, 1)])
    return [("body", body, body_mat), ("head", head, body_mat), ("beak", beak, beak_mat), ("tail", tail, body_mat),
            *wings, ("eyes", eyes, eye_mat)]


def _toy_car(rng: np.random.Generator) -> Built:
    paint = _toy_material(rng, textured=0.2)
    length, width, height = 1.0, rng.uniform(0.42, 0.55), rng.uniform(0.18, 0.26)
    wheel_r = rng.uniform(0.11, 0.15)
    wheel_w = rng.uniform(0.07, 0.1)
    clearance = wheel_r * rng.uniform(0.5, 0.8)
    body = mo.rounded_box((length, width, height), height * 0.3, (0, 0, clearance + height / 2), 10)
    cab_len = length * rng.uniform(0.4, 0.6)
    cab_h = height * rng.uniform(0.6, 1.0)
    cab_x = rng.uniform(-0.15, 0.05)
    cabin = mo.Manifold.batch_hull(
        [mo.box((cab_len, width * 0.9, 0.01), (cab_x, 0, clearance + height - 0.01)),
         mo.box((cab_len * 0.65, width * 0.8, 0.01), (cab_x - cab_len * 0.05, 0, clearance + height + cab_h))]
    )
    glass = Material((0.15, 0.2, 0.3) if rng.uniform() < 0.7 else tuple(c * 0.6 for c in paint.base_color), 0.1)
    tyre = Material((0.06, 0.06, 0.06), 0.85)
    parts: Built = [("body", body, paint), ("cabin", cabin, glass if rng.uniform() < 0.5 else _shade(paint, 0.85))]
    axle_x = length / 2 - wheel_r * rng.uniform(1.1, 1.5)
    for name, (sx, sy) in {"wheel_fl": (1, 1), "wheel_fr": (1, -1), "wheel_rl": (-1, 1), "wheel_rr": (-1, -1)}.items():
        center = (sx * axle_x, sy * (width / 2 - wheel_w * 0.2), wheel_r)
        wheel = mo.cylinder(wheel_r, wheel_w, center, (0, 1, 0), 24)
        wheel = wheel + mo.cylinder(wheel_r * 0.5, wheel_w * 1.15, center, (0, 1, 0), 16)
        parts.append((name, wheel, tyre))
    if rng.uniform() < 0.4:
        spoiler = mo.box((0.06, width * 0.9, 0.03), (-length / 2 + 0.05, 0, clearance + height + 0.06))
        spoiler = spoiler + mo.box((0.03, width * 0.5, 0.07), (-length / 2 + 0.05, 0, clearance + height + 0.02))
        parts.append(("spoiler", spoiler, _shade(paint, 0.7)))
    return parts


def _toy_mug(rng: np.random.Generator) -> Built:
    mat = _toy_material(rng, textured=0.5, sat=(0.3, 0.9))
    radius = rng.uniform(0.3, 0.4)
    height = rng.uniform(0.7, 1.0)
    wall = rng.uniform(0.03, 0.05)
    cup = mo.cylinder(radius, height, (0, 0, height / 2), segments=40, radius_top=radius * rng.uniform(1.0, 1.15))
    cup = cup - mo.cylinder(radius - wall, height, (0, 0, height / 2 + wall + 0.001), segments=40,
                            radius_top=(radius - wall) * 1.1)
    handle_r = height * rng.uniform(0.22, 0.3)
    handle = mo.torus(handle_r, wall * rng.uniform(1.0, 1.6), (radius + handle_r * 0.3, 0, height * 0.52), (0, 1, 0), 28, 10)
    handle = handle - mo.cylinder(radius - wall * 0.5, height, (0, 0, height / 2), segments=40)
    foot = mo.tube(radius * 1.02, radius * 0.8, wall * 1.5, (0, 0, wall * 0.75), segments=40)
    liquid_mat = _toy_material(rng, hue=0.07, sat=(0.5, 0.9), val=(0.15, 0.45))
    level = height * rng.uniform(0.6, 0.85)
    liquid = mo.cylinder(radius - wall, height, (0, 0, height / 2 + wall), segments=40, radius_top=(radius - wall) * 1.1)
    liquid = liquid.scale((1.02, 1.02, 1.0)) ^ mo.box((2 * radius, 2 * radius, wall), (0, 0, level))
    return [("cup", cup, mat), ("handle", handle, _shade(mat, rng.uniform(0.8, 1.0))), ("foot", foot, _shade(mat, 0.7)),
            ("liquid", liquid, liquid_mat)]


def _toy_robot(rng: np.random.Generator) -> Built:
    hue = rng.uniform()
    metal = _toy_material(rng, hue=hue, sat=(0.1, 0.6), textured=0.3)
    accent = _toy_material(rng, hue=(hue + 0.5) % 1.0)
    leg_h = rng.uniform(0.25, 0.4)
    tw, td, th = rng.uniform(0.35, 0.5), rng.uniform(0.22, 0.3), rng.uniform(0.35, 0.5)
    torso = mo.rounded_box((tw, td, th), 0.04, (0, 0, leg_h + th / 2), 8)
    hs = rng.uniform(0.2, 0.28)
    head_z = leg_h + th + hs / 2 - 0.01
    head = mo.rounded_box((hs * 1.1, hs, hs), 0.03, (0, 0, head_z), 8)
    eyes = mo.union([mo.cylinder(hs * 0.12, 0.04, (s * hs * 0.25, hs / 2, head_z + hs * 0.1), (0, 1, 0), 12) for s in (-1, 1)])
    antenna = mo.cylinder(0.012, 0.12, (0, 0, head_z + hs / 2 + 0.05), segments=8)
    antenna = antenna + mo.sphere(0.03, (0, 0, head_z + hs / 2 + 0.12), 12)
    parts: Built = [("torso", torso, metal), ("head", head, _shade(metal, 1.1)), ("eyes", eyes, accent),
                    ("antenna", antenna, accent)]
    arm_len = th * rng.uniform(0.8, 1.1)
    for side, s in (("l", 1), ("r", -1)):
        arm_r = rng.uniform(0.035, 0.05)
        shoulder = np.array([s * (tw / 2 + arm_r * 0.5), 0, leg_h + th * 0.85])
        swing = rng.uniform(-0.5, 0.5)
        hand = shoulder + arm_len * np.array([s * 0.25, np.sin(swing), -np.cos(swing)])
        parts.append((f"arm_{side}", mo.capsule(shoulder, hand, arm_r, 12), _shade(metal, 0.85)))
        leg = mo.rounded_box((0.1, 0.12, leg_h + 0.03), 0.02, (s * tw * 0.25, 0, (leg_h + 0.03) / 2), 6)
        leg = leg + mo.box((0.14, 0.18, 0.05), (s * tw * 0.25, 0.03, 0.025))
        parts.append((f"leg_{side}", leg, _shade(metal, 0.75)))
    return parts


def _toy_table(rng: np.random.Generator) -> Built:
    wood = _toy_material(rng, hue=0.08, sat=(0.4, 0.7), val=(0.35, 0.75), textured=0.6)
    sx, sy = 1.0, rng.uniform(0.5, 0.9)
    top_t = rng.uniform(0.04, 0.07)
    height = rng.uniform(0.45, 0.7)
    if rng.uniform() < 0.5:
        top = mo.rounded_box((sx, sy, top_t), top_t * 0.4, (0, 0, height - top_t / 2), 8)
    else:
        top = mo.cylinder(0.5, top_t, (0, 0, height - top_t / 2), segments=40).scale((1, sy, 1))
    round_legs = rng.uniform() < 0.5
    leg_r = rng.uniform(0.025, 0.04)
    inset = 0.12 if round_legs else 0.1
    parts: Built = [("top", top, wood)]
    leg_mat = _shade(wood, rng.uniform(0.7, 1.0))
    for i, (px, py) in enumerate([(1, 1), (1, -1), (-1, 1), (-1, -1)]):
        center = (px * (sx / 2 - inset), py * (sy / 2 - inset) * (0.75 if not round_legs else 0.7), (height - top_t) / 2 + 0.005)
        if round_legs:
            leg = mo.cylinder(leg_r, height - top_t + 0.01, center, segments=12, radius_top=leg_r * 1.3)
        else:
            leg = mo.box((leg_r * 2, leg_r * 2, height - top_t + 0.01), center)
        parts.append((f"leg_{i}", leg, leg_mat))
    return parts


def _toy_chair(rng: np.random.Generator) -> Built:
    mat = _toy_material(rng, textured=0.4, sat=(0.3, 0.8))
    seat_w, seat_d = rng.uniform(0.4, 0.5), rng.uniform(0.4, 0.5)
    seat_h = rng.uniform(0.4, 0.5)
    seat_t = 0.05
    back_h = rng.uniform(0.4, 0.6)
    leg = rng.uniform(0.02, 0.03)
    seat = mo.rounded_box((seat_d, seat_w, seat_t), 0.015, (0, 0, seat_h - seat_t / 2), 6)
    back = mo.rounded_box((0.04, seat_w * 0.95, back_h), 0.015, (0, 0, back_h / 2), 6)
    back = back.rotate((0, -rng.uniform(0, 10), 0)).translate((-seat_d / 2 + 0.02, 0, seat_h - 0.03))
    cushion = mo.rounded_box((seat_d * 0.85, seat_w * 0.85, 0.05), 0.02, (0, 0, seat_h + 0.02), 8)
    leg_mat = _shade(mat, 0.7)
    parts: Built = [("seat", seat, mat), ("back", back, mat), ("cushion", cushion, _toy_material(rng, textured=0.5))]
    for i, (px, py) in enumerate([(1, 1), (1, -1), (-1, 1), (-1, -1)]):
        center = (px * (seat_d / 2 - 0.04), py * (seat_w / 2 - 0.04), (seat_h - seat_t) / 2 + 0.005)
        parts.append((f"leg_{i}", mo.box((leg * 2, leg * 2, seat_h - seat_t + 0.01), center), leg_mat))
    return parts


def _toy_lamp(rng: np.random.Generator) -> Built:
    mat = _toy_material(rng, sat=(0.2, 0.8))
    base_r = rng.uniform(0.15, 0.22)
    base_h = rng.uniform(0.04, 0.07)
    stem_h = rng.uniform(0.5, 0.8)
    base = mo.cylinder(base_r, base_h, (0, 0, base_h / 2), segments=32, radius_top=base_r * 0.85)
    stem = mo.cylinder(0.02, stem_h, (0, 0, base_h + stem_h / 2 - 0.005), segments=12)
    lean = rng.uniform(0.1, 0.35)
    arm_top = np.array([lean, 0, base_h + stem_h + 0.15])
    arm = mo.capsule((0, 0, base_h + stem_h - 0.01), arm_top, 0.018, 8)
    shade_h = rng.uniform(0.18, 0.26)
    shade_r = rng.uniform(0.12, 0.18)
    axis = np.array([0.5, 0, -1.0])
    shade_base = arm_top - axis / np.linalg.norm(axis) * 0.02
    shade = mo.cone(shade_r * 0.4, shade_h, shade_base, axis, 28, radius_top=shade_r)
    shade = shade - mo.cone(shade_r * 0.3, shade_h * 1.05, shade_base + axis / np.linalg.norm(axis) * 0.03, axis, 28,
                            radius_top=shade_r * 0.9)
    bulb_r = shade_r * 0.3
    bulb = mo.sphere(bulb_r, shade_base + axis / np.linalg.norm(axis) * (0.03 + bulb_r * 0.8), 16)
    bulb_mat = Material((1.0, 0.95, 0.75), 0.1)
    return [("base", base, mat), ("stem", stem, _shade(mat, 0.6)), ("arm", arm, _shade(mat, 0.6)),
            ("shade", shade, _toy_material(rng, textured=0.4)), ("bulb", bulb, bulb_mat)]


def _toy_snowman(rng: np.random.Generator) -> Built:
    snow = Material((0.93, 0.94, 0.97), float(rng.uniform(0.6, 0.95)))
    r0 = rng.uniform(0.28, 0.34)
    r1 = r0 * rng.uniform(0.65, 0.8)
    r2 = r1 * rng.uniform(0.6, 0.8)
    z0 = r0 * 0.95
    z1 = z0 + r0 * 0.85 + r1 * 0.8
    z2 = z1 + r1 * 0.85 + r2 * 0.8
    bottom = mo.sphere(r0, (0, 0, z0), 28).trim_by_plane((0, 0, 1), 0.0)
    middle = mo.sphere(r1, (0, 0, z1), 24)
    head = mo.sphere(r2, (0, 0, z2), 24)
    nose = mo.cone(r2 * 0.2, r2 * rng.uniform(0.6, 1.0), (r2 * 0.9, 0, z2), (1, 0, 0), 12)
    hat_mat = _toy_material(rng, val=(0.1, 0.5), sat=(0.2, 0.8))
    hat = mo.cylinder(r2 * 1.2, 0.025, (0, 0, z2 + r2 * 0.8), segments=24)
    hat = hat + mo.cylinder(r2 * 0.75, r2 * 0.9, (0, 0, z2 + r2 * 0.8 + r2 * 0.45), segments=24)
    stick = Material((0.35, 0.22, 0.1), 0.9)
    parts: Built = [("bottom", bottom, snow), ("middle", middle, snow), ("head", head, snow),
                    ("nose", nose, Material((0.95, 0.45, 0.08), 0.5)), ("hat", hat, hat_mat)]
    for side, s in (("l", 1), ("r", -1)):
        start = np.array([0, s * r1 * 0.8, z1 + r1 * 0.2])
        end = start + np.array([rng.uniform(-0.1, 0.1), s * r1 * 1.3, rng.uniform(0.05, 0.3)])
        parts.append((f"arm_{side}", mo.capsule(start, end, 0.015, 8), stick))
    return parts


def _toy_mushroom(rng: np.random.Generator) -> Built:
    cap_mat = _toy_material(rng, hue=float(rng.choice([0.0, 0.02, 0.08, 0.6])), textured=0.8, sat=(0.6, 0.95))
    stem_mat = Material((0.93, 0.9, 0.8), float(rng.uniform(0.5, 0.9)))
    stem_r = rng.uniform(0.1, 0.16)
    stem_h = rng.uniform(0.4, 0.65)
    cap_r = rng.uniform(0.35, 0.5)
    cap_h = cap_r * rng.uniform(0.5, 0.8)
    base = mo.ellipsoid((stem_r * 1.6, stem_r * 1.6, stem_r * 0.6), (0, 0, 0), 20).trim_by_plane((0, 0, 1), 0.0)
    taper = rng.uniform(0.7, 0.9)
    stem = mo.cylinder(stem_r, stem_h, (0, 0, stem_h / 2), segments=24, radius_top=stem_r * taper)
    cap = mo.ellipsoid((cap_r, cap_r, cap_h), (0, 0, stem_h - 0.02), 32).trim_by_plane((0, 0, 1), stem_h - 0.02)
    gills = mo.cylinder(cap_r * 0.95, 0.03, (0, 0, stem_h - 0.02), segments=32)
    ring = mo.torus(stem_r * (1 - 0.7 * (1 - taper)), 0.02, (0, 0, stem_h * 0.7), segments=24, minor_segments=8)
    return [("stem", stem, stem_mat), ("cap", cap, cap_mat), ("gills", gills, _shade(stem_mat, 0.85)),
            ("ring", ring, stem_mat), ("base", base, _shade(stem_mat, 0.9))]


def _toy_rocket(rng: np.random.Generator) -> Built:
    hull = _toy_material(rng, sat=(0.0, 0.3), val=(0.75, 0.95), textured=0.3)
    accent = _toy_material(rng)
    radius = rng.uniform(0.1, 0.14)
    body_h = rng.uniform(0.5, 0.7)
    fin_h = rng.uniform(0.15, 0.25)
    z0 = fin_h * 0.4
    body = mo.cylinder(radius, body_h, (0, 0, z0 + body_h / 2), segments=32)
    nose = mo.cone(radius, radius * rng.uniform(1.8, 2.8), (0, 0, z0 + body_h - 0.005), (0, 0, 1), 32)
    nozzle = mo.cone(radius * 0.5, z0 + 0.01, (0, 0, z0 + 0.005), (0, 0, -1), 20, radius_top=radius * 0.8)
    window = mo.torus(radius * 0.3, 0.015, (radius * 0.98, 0, z0 + body_h * 0.65), (1, 0, 0), 20, 8)
    window = window + mo.cylinder(radius * 0.3, 0.02, (radius * 0.97, 0, z0 + body_h * 0.65), (1, 0, 0), 20)
    n_fins = int(rng.choice([3, 4]))
    parts: Built = [("body", body, hull), ("nose", nose, accent), ("nozzle", nozzle, Material((0.25, 0.25, 0.28), 0.4)),
                    ("window", window, Material((0.3, 0.6, 0.9), 0.1))]
    span = radius * rng.uniform(1.0, 1.6)
    for k in range(n_fins):
        pts = np.array([[radius * 0.8, -0.012, 0.0], [radius * 0.8, 0.012, 0.0], [radius * 0.8 + span, -0.012, 0.0],
                        [radius * 0.8 + span, 0.012, 0.0], [radius * 0.8, -0.012, z0 + fin_h * 1.6],
                        [radius * 0.8, 0.012, z0 + fin_h * 1.6]])
        fin = mo.Manifold.hull_points(pts).rotate((0, 0, 360.0 * k / n_fins + 45.0))
        parts.append((f"fin_{k}", fin, accent))
    return parts


# Flat toys (opt-in, ``FLAT_TOY_CATEGORIES``): objects that lie on the floor, 12-26% of their longest side tall, the
# height the default categories never reach (their shortest is about 9 cm, a real banana is 7 cm).
def _toy_banana(rng: np.random.Generator) -> Built:
    hue = float(rng.choice([0.13, 0.14, 0.16, 0.2])) if rng.uniform() < 0.85 else float(rng.uniform(0.05, 0.25))
    peel = _toy_material(rng, hue=hue, sat=(0.6, 0.9), val=(0.7, 0.95), textured=0.3)
    bend = np.deg2rad(rng.uniform(80.0, 140.0))  # the arc's angle; its length is 1
    arc_radius = 1.0 / bend
    r_max = rng.uniform(0.08, 0.11)
    flat = rng.uniform(0.8, 0.95)  # the cross-section's height / width
    lift = rng.uniform(0.0, 0.04)  # the ends rise off the floor
    ts = np.linspace(0.0, 1.0, 9)
    angles = bend * (ts - 0.5)
    radii = r_max * (0.3 + 0.7 * np.sin(np.pi * ts) ** 0.6)
    centers = np.stack([arc_radius * np.sin(angles), arc_radius * (1.0 - np.cos(angles)),
                        radii * flat + lift * (2.0 * ts - 1.0) ** 2], axis=1)
    balls = [mo.ellipsoid((r, r, r * flat), c, 16) for r, c in zip(radii, centers)]
    body = mo.union([mo.Manifold.batch_hull([a, b]) for a, b in zip(balls[:-1], balls[1:])])
    tangent_end = centers[-1] - centers[-2]
    tangent_end /= np.linalg.norm(tangent_end)
    stem_len = rng.uniform(0.06, 0.11)
    stem_start = centers[-1] - tangent_end * radii[-1] * 0.5
    stem_end = centers[-1] + tangent_end * (radii[-1] + stem_len) + np.array([0.0, 0.0, stem_len * 0.3])
    stem_mat = _toy_material(rng, hue=float(rng.uniform(0.08, 0.25)), sat=(0.4, 0.7), val=(0.3, 0.55))
    stem = mo.capsule(stem_start, stem_end, radii[-1] * 0.55, 10)
    tangent_start = centers[0] - centers[1]
    tangent_start /= np.linalg.norm(tangent_start)
    tip = mo.sphere(radii[0] * 0.65, centers[0] + tangent_start * radii[0] * 0.7, 12)
    return [("body", body, peel), ("stem", stem, stem_mat), ("tip", tip, Material((0.2, 0.14, 0.08), 0.8))]


def _toy_turtle(rng: np.random.Generator) -> Built:
    shell_mat = _toy_material(rng, hue=float(rng.choice([0.08, 0.25, 0.33, 0.4])), textured=0.7, sat=(0.4, 0.8))
    skin = _toy_material(rng, hue=float(rng.uniform(0.2, 0.4)), sat=(0.3, 0.7), val=(0.4, 0.8))
    sx, sy = rng.uniform(0.36, 0.42), rng.uniform(0.26, 0.34)
    sz = rng.uniform(0.12, 0.2)
    base = rng.uniform(0.03, 0.05)  # the shell's rim above the floor
    shell = mo.ellipsoid((sx, sy, sz), (0, 0, base), 28).trim_by_plane((0, 0, 1), base)
    plastron = mo.ellipsoid((sx * 0.92, sy * 0.9, base * 0.9), (0, 0, base), 20)
    head_r = rng.uniform(0.08, 0.11)
    head_c = (sx + head_r * 0.6, 0.0, base + head_r * rng.uniform(0.6, 1.2))
    head = mo.ellipsoid((head_r * 1.3, head_r, head_r * 0.9), head_c, 16)
    neck = mo.capsule((sx * 0.7, 0, base + 0.02), head_c, head_r * 0.55, 10)
    parts: Built = [("shell", shell, shell_mat), ("plastron", plastron, _shade(skin, 0.9)), ("head", head, skin),
                    ("neck", neck, skin)]
    leg_r = rng.uniform(0.06, 0.08)
    for name, (lx, ly) in {"leg_fl": (1, 1), "leg_fr": (1, -1), "leg_rl": (-1, 1), "leg_rr": (-1, -1)}.items():
        center = (lx * sx * 0.55, ly * sy * 0.85, leg_r * 0.6)
        parts.append((name, mo.ellipsoid((leg_r * 1.4, leg_r, leg_r * 0.6), center, 12), skin))
    parts.append(("tail", mo.cone(0.035, rng.uniform(0.08, 0.14), (-sx * 0.9, 0, base + 0.02), (-1, 0, -0.15), 10),
                  skin))
    return parts


def _toy_skateboard(rng: np.random.Generator) -> Built:
    deck_mat = _toy_material(rng, textured=0.6)
    metal = Material((0.7, 0.7, 0.72), float(rng.uniform(0.2, 0.4)))
    wheel_mat = _toy_material(rng, sat=(0.0, 0.6), val=(0.7, 0.95))
    width = rng.uniform(0.24, 0.3)
    deck_t = rng.uniform(0.02, 0.03)
    wheel_r = rng.uniform(0.035, 0.05)
    wheel_w = rng.uniform(0.035, 0.05)
    truck_h = rng.uniform(0.025, 0.04)
    axle_x = rng.uniform(0.3, 0.36)
    deck_z = 2 * wheel_r + truck_h
    deck = mo.rounded_box((1.0, width, deck_t), width * 0.45, (0, 0, deck_z + deck_t / 2), 12)
    parts: Built = [("deck", deck, deck_mat)]
    for name, sx in (("truck_f", 1), ("truck_r", -1)):
        low, high = wheel_r * 0.8, deck_z + 0.004  # from the axle up into the deck
        truck = mo.box((0.05, width * 0.75, high - low), (sx * axle_x, 0, (low + high) / 2))
        parts.append((name, truck, metal))
    for name, (sx, sy) in {"wheel_fl": (1, 1), "wheel_fr": (1, -1), "wheel_rl": (-1, 1), "wheel_rr": (-1, -1)}.items():
        center = (sx * axle_x, sy * (width * 0.375 + wheel_w / 2 - 0.005), wheel_r)
        parts.append((name, mo.cylinder(wheel_r, wheel_w, center, (0, 1, 0), 20), wheel_mat))
    return parts


_PART_BUILDERS: dict[str, Callable[[np.random.Generator], Built]] = {
    "bracket": _parts_bracket,
    "flange": _parts_flange,
    "shaft": _parts_shaft,
    "plate": _parts_plate,
    "fitting": _parts_fitting,
    "gear": _parts_gear,
    "pulley": _parts_pulley,
    "block": _parts_block,
    "clevis": _parts_clevis,
}
_TOY_BUILDERS: dict[str, Callable[[np.random.Generator], Built]] = {
    "duck": _toy_duck,
    "car": _toy_car,
    "mug": _toy_mug,
    "robot": _toy_robot,
    "table": _toy_table,
    "chair": _toy_chair,
    "lamp": _toy_lamp,
    "snowman": _toy_snowman,
    "mushroom": _toy_mushroom,
    "rocket": _toy_rocket,
    "banana": _toy_banana,
    "turtle": _toy_turtle,
    "skateboard": _toy_skateboard,
}


# --------------------------------------------------------------------------------------- public API
def family_of(model: ObjectModel) -> str:
    """Family word of a generated shape name (``"parts_gear_0007"`` -> ``"parts"``)."""
    return model.shape_name.split("_")[0]


def category_of(model: ObjectModel) -> str:
    """Category word of a generated shape name (``"toys_duck_0003"`` -> ``"duck"``); "" when absent."""
    words = model.shape_name.split("_")
    return words[1] if len(words) >= 3 else ""


def _normalise(built: Built, size: float) -> list[Part]:
    """Scale so the longest bounding-box side is ``size`` and centre the box on the origin."""
    solids = [s for _, s, _ in built]
    boxes = np.array([s.bounding_box() for s in solids], dtype=np.float64)  # (P, 6) min xyz, max xyz
    low, high = boxes[:, :3].min(axis=0), boxes[:, 3:].max(axis=0)
    scale = size / float((high - low).max())
    shift = -(low + high) / 2.0 * scale
    parts = []
    for name, solid, material in built:
        mesh = mo.to_trimesh(solid.scale((scale, scale, scale)).translate(tuple(shift)))
        parts.append(Part(name=name, mesh=mesh, material=material))
    return parts


def toy_categories(spec=None, *, family: str = "toys") -> tuple[str, ...] | None:
    """The toy categories a generated dataset draws from, or None for the default (``TOY_CATEGORIES``).

    ``spec``: None or ``""`` (the default), a sequence of names, or a comma-separated string of names;
    a string starting with ``+`` adds its names to the default ones (``"+banana,turtle,skateboard"``: the
    ten default categories and the flat ones). Names come from ``TOY_CATEGORIES`` and
    ``FLAT_TOY_CATEGORIES``; the order counts (a scene's category and the unseen ones are drawn by index).
    A list equal to the default returns None, so that both name the same dataset. ``family``: the dataset's;
    only toys have categories to choose, so any ``spec`` but None is refused for another family.

    Raises:
        ValueError: naming an unknown or repeated category, an empty list, or a family without categories.
    """
    if spec is not None and family != "toys":
        raise ValueError(f"categories: only the toys family has categories to choose, got family {family!r}")
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return None
    if isinstance(spec, str):
        text = spec.strip()
        extra = text.startswith("+")
        names = [n.strip() for n in text.lstrip("+").split(",") if n.strip()]
        names = [*TOY_CATEGORIES, *names] if extra else names
    else:
        names = [str(n) for n in spec]
    known = (*TOY_CATEGORIES, *FLAT_TOY_CATEGORIES)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"categories: unknown toy categor{'y' if len(unknown) == 1 else 'ies'} "
                         f"{', '.join(map(repr, unknown))}; expected names from {known}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"categories: {', '.join(map(repr, repeated))} given more than once")
    if not names:
        raise ValueError("categories: no category given")
    return None if tuple(names) == TOY_CATEGORIES else tuple(names)


def make_shape(family: str, rng: np.random.Generator, *, category: str | None = None) -> ObjectModel:
    """Draw one procedural object of ``family`` ("parts" or "toys"), deterministic given ``rng``.

    ``category`` picks a sub-family (``TOY_CATEGORIES`` or ``FLAT_TOY_CATEGORIES`` for toys,
    ``PART_CATEGORIES`` for parts); it is drawn from ``rng`` when None (toys: from ``TOY_CATEGORIES``).
    The name is ``"<family>_<category>_<4 digits>"``.
    """
    if family == "toys":
        builders = _TOY_BUILDERS
    elif family == "parts":
        builders = _PART_BUILDERS
    else:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if category is None:
        category = str(rng.choice(list(TOY_CATEGORIES if family == "toys" else builders)))
    elif category not in builders:
        raise ValueError(f"category {category!r} is not a {family} category; expected one of {tuple(builders)}")
    shape_id = int(rng.integers(0, 10000))
    size = float(rng.uniform(*SIZE_RANGE))
    built = builders[category](rng)
    parts = _normalise([(n, s, m) for n, s, m in built if not s.is_empty()], size)
    return ObjectModel(shape_name=f"{family}_{category}_{shape_id:04d}", parts=parts)


# -------------------------------------------------------------------------------------- user meshes
def _default_material(index: int) -> Material:
    h = (0.07 + 0.23 * index) % 1.0
    return Material(tuple(float(c) for c in colorsys.hsv_to_rgb(h, 0.45, 0.8)), 0.5)


def _mesh_parts(loaded, path: Path) -> list[tuple[str, trimesh.Trimesh, Material | None]]:
    """Split a loaded file into named parts: scene geometries (mesh groups) or connected components."""
    if isinstance(loaded, trimesh.Scene):
        items = []
        for node in loaded.graph.nodes_geometry:
            transform, geom_name = loaded.graph[node]
            geom = loaded.geometry[geom_name]
            if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
                continue
            mesh = geom.copy()
            mesh.apply_transform(transform)
            items.append((str(node), mesh))
        if not items:
            raise ValueError(f"{path}: no triangle meshes in the file")
        if len(items) == 1:
            loaded = items[0][1]
        else:
            return [(name, mesh, _material_of(mesh)) for name, mesh in items]
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise ValueError(f"{path}: no triangle mesh in the file (got {type(loaded).__name__})")
    components = loaded.split(only_watertight=False)
    components = [c for c in components if len(c.faces) > 0]
    if len(components) <= 1:
        return [("part_0", loaded, _material_of(loaded))]
    components.sort(key=lambda c: -float(c.area))
    return [(f"part_{i}", c, _material_of(c)) for i, c in enumerate(components)]


def _material_of(mesh: trimesh.Trimesh) -> Material | None:
    """A material from the mesh's own colour (face/vertex colours or PBR base colour), if it has one."""
    visual = mesh.visual
    try:
        if visual.kind in ("face", "vertex"):
            colors = np.asarray(visual.face_colors if visual.kind == "face" else visual.vertex_colors, dtype=np.float64)
            rgb = colors[:, :3].mean(axis=0) / 255.0
            return Material(tuple(float(c) for c in np.clip(rgb, 0, 1)), 0.5)
        material = getattr(visual, "material", None)
        base = getattr(material, "baseColorFactor", None)
        if base is not None:
            rgb = np.asarray(base, dtype=np.float64)[:3]
            rgb = rgb / 255.0 if rgb.max() > 1.0 else rgb
            return Material(tuple(float(c) for c in np.clip(rgb, 0, 1)), 0.5)
    except (AttributeError, ValueError, IndexError):
        return None
    return None


def load_mesh_folder(path, *, size: float | None = 0.3, up: str = "z") -> list[ObjectModel]:
    """Load every OBJ/PLY/GLB/GLTF/STL/OFF file of a folder (sorted by name) as an ObjectModel.

    Parts are the file's mesh groups (scene geometries) or, for a single mesh, its connected
    components. Each object is rotated so that ``up`` ("z" or "y", the usual GLB convention) is z,
    scaled so that its longest side is ``size`` metres (None keeps the file's units) and centred on
    its bounding-box centre. Parts without a colour of their own get a default material.
    The shape name is the file stem with ``"_"`` replaced by ``"-"`` (the word before the first
    ``"_"`` of a scene name is its category).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"load_mesh_folder: {folder} is not a folder")
    if up not in ("z", "y"):
        raise ValueError(f"load_mesh_folder: up must be 'z' or 'y', got {up!r}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in MESH_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"load_mesh_folder: no mesh files ({', '.join(MESH_SUFFIXES)}) in {folder}")
    models = []
    for file in files:
        loaded = trimesh.load(file, process=True)
        items = _mesh_parts(loaded, file)
        meshes = [m for _, m, _ in items]
        if up == "y":
            y_to_z = trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0])
            for m in meshes:
                m.apply_transform(y_to_z)
        low = np.min([m.bounds[0] for m in meshes], axis=0)
        high = np.max([m.bounds[1] for m in meshes], axis=0)
        extent = float((high - low).max())
        if not np.isfinite(extent) or extent <= 0:
            raise ValueError(f"{file}: degenerate mesh bounds {low} .. {high}")
        scale = 1.0 if size is None else size / extent
        parts = []
        for i, (name, mesh, material) in enumerate(items):
            mesh.apply_translation(-(low + high) / 2.0)
            mesh.apply_scale(scale)
            clean = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, process=True)
            parts.append(Part(name=name, mesh=clean, material=material or _default_material(i)))
        models.append(ObjectModel(shape_name=file.stem.replace("_", "-"), parts=parts))
    return models
