"""Synthetic odd-one-out scenes in the published ToysAD-8K / PartsAD-15K folder format.

Objects and anomalies (``shapes``, ``anomalies``, ``model``) are built with trimesh and manifold3d;
scenes (``scene``) place several instances of one shape, a strict minority anomalous, on a textured
floor under an orbit of cameras; ``render`` ray-casts them with embree; ``writer`` writes the folders,
datasets and splits; ``contact_sheet`` draws a PNG grid with the anomalous objects outlined.

Example:
    >>> from oddsparse.data.synth import generate_dataset
    >>> folders = generate_dataset("/tmp/synth", "toys", scenes=2, seed=0, objects=(3, 4), views=4, size=64,
    ...                            progress=False)  # doctest: +SKIP
"""

#: Bumped whenever the same arguments would generate different scenes (caches key on it).
#: 2: footprints kept >= 10 cm apart. 3: the last view no longer repeats the first exactly (elevation period V).
GENERATOR_VERSION = 3

from oddsparse.data.synth.contact_sheet import write_contact_sheet  # noqa: E402
from oddsparse.data.synth.scene import SceneSpec, generate_group_scene, generate_scene  # noqa: E402
from oddsparse.data.synth.writer import dataset_splits, generate_dataset, render_and_write_scene, write_scene

__all__ = [
    "GENERATOR_VERSION",
    "ANOMALY_TYPES",
    "FAMILY_ANOMALY_TYPES",
    "TOY_CATEGORIES",
    "FLAT_TOY_CATEGORIES",
    "SceneSpec",
    "dataset_splits",
    "generate_dataset",
    "generate_scene",
    "generate_group_scene",
    "load_mesh_folder",
    "make_anomaly",
    "make_shape",
    "render_and_write_scene",
    "write_contact_sheet",
    "write_scene",
]

_LAZY = {
    "ANOMALY_TYPES": "oddsparse.data.synth.anomalies",
    "FAMILY_ANOMALY_TYPES": "oddsparse.data.synth.anomalies",
    "make_anomaly": "oddsparse.data.synth.anomalies",
    "TOY_CATEGORIES": "oddsparse.data.synth.shapes",
    "FLAT_TOY_CATEGORIES": "oddsparse.data.synth.shapes",
    "make_shape": "oddsparse.data.synth.shapes",
    "load_mesh_folder": "oddsparse.data.synth.shapes",
}


def __getattr__(name: str):
    # shapes and anomalies are imported on first use: they pull in manifold3d
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'oddsparse.data.synth' has no attribute {name!r}")
