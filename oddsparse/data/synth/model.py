"""Object model of the synthetic scene generator: materials, parts and multi-part objects.

An object lives in its OBJECT frame: z up, metres, and the NORMAL shape is centred so that the centre
of its axis-aligned bounding box is the origin (the published ``location`` is the box centre; the object
rests on the floor when placed at ``z = size_z / 2``). An anomalous twin keeps its normal shape's frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import trimesh

__all__ = ["Material", "Part", "ObjectModel"]

TextureKind = Literal["none", "stripes", "checker", "noise"]
_TEXTURES = ("none", "stripes", "checker", "noise")


@dataclass
class Material:
    """Surface appearance of one part.

    ``base_color`` is linear-ish RGB in [0, 1]; ``roughness`` in [0, 1] (the renderer maps it to a
    specular term); ``texture`` is an optional procedural pattern mixing ``texture_color`` into the
    base colour with a period of ``texture_scale`` metres.
    """

    base_color: tuple[float, float, float]
    roughness: float
    texture: TextureKind = "none"
    texture_color: tuple[float, float, float] = (0.0, 0.0, 0.0)
    texture_scale: float = 0.02

    def __post_init__(self) -> None:
        for name in ("base_color", "texture_color"):
            value = tuple(float(c) for c in getattr(self, name))
            if len(value) != 3 or not all(0.0 <= c <= 1.0 for c in value):
                raise ValueError(f"Material.{name} must be 3 floats in [0, 1], got {getattr(self, name)!r}")
            setattr(self, name, value)
        self.roughness = float(self.roughness)
        if not 0.0 <= self.roughness <= 1.0:
            raise ValueError(f"Material.roughness must be in [0, 1], got {self.roughness}")
        if self.texture not in _TEXTURES:
            raise ValueError(f"Material.texture must be one of {_TEXTURES}, got {self.texture!r}")
        self.texture_scale = float(self.texture_scale)
        if not self.texture_scale > 0.0:
            raise ValueError(f"Material.texture_scale must be > 0 metres, got {self.texture_scale}")


@dataclass
class Part:
    """A named piece of an object: a mesh in the object frame (metres, watertight where possible)."""

    name: str
    mesh: trimesh.Trimesh
    material: Material

    def __post_init__(self) -> None:
        if not isinstance(self.mesh, trimesh.Trimesh):
            raise ValueError(f"Part {self.name!r}: mesh must be a trimesh.Trimesh, got {type(self.mesh).__name__}")
        if len(self.mesh.faces) == 0:
            raise ValueError(f"Part {self.name!r}: mesh has no faces")


@dataclass
class ObjectModel:
    """A multi-part object; ``shape_name`` is e.g. ``"parts_0007"`` or ``"toys_duck_0003"``.

    For toys, the word before the first ``"_"`` of the scene name is the category.
    """

    shape_name: str
    parts: list[Part] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError(f"ObjectModel {self.shape_name!r} has no parts")

    def mesh(self) -> trimesh.Trimesh:
        """All parts concatenated into one mesh (no booleans, part meshes are kept as they are)."""
        if len(self.parts) == 1:
            return self.parts[0].mesh.copy()
        return trimesh.util.concatenate([p.mesh for p in self.parts])

    def bounds(self) -> np.ndarray:
        """(2, 3) axis-aligned bounding box [min, max] over all parts, object frame."""
        lows = np.min([p.mesh.bounds[0] for p in self.parts], axis=0)
        highs = np.max([p.mesh.bounds[1] for p in self.parts], axis=0)
        return np.stack([lows, highs]).astype(np.float64)

    def extents(self) -> np.ndarray:
        """(3,) bounding-box size."""
        b = self.bounds()
        return b[1] - b[0]

    def num_faces(self) -> int:
        return int(sum(len(p.mesh.faces) for p in self.parts))

    def copy(self) -> "ObjectModel":
        """Deep copy of meshes; materials are copied too (they are small mutable dataclasses)."""
        return ObjectModel(
            self.shape_name,
            [Part(p.name, p.mesh.copy(), replace(p.material)) for p in self.parts],
        )
