"""Optional backends, probed once and lazily.

Importing oddsparse never imports pytorch3d or torch_scatter; the first call to
``has_*`` / ``require_*`` does, and the answer is cached. Only ``ModuleNotFoundError`` for the
module itself counts as "absent": a broken install raises its real error.

Callers expose ``backend="auto" | "torch" | <name>`` and resolve it with :func:`resolve_backend`.
"""
from __future__ import annotations

import functools
import importlib

__all__ = ["has_spconv", "has_torch_scatter", "has_pytorch3d", "require_spconv", "require_torch_scatter",
           "require_pytorch3d", "resolve_backend"]

_INSTALL_HINTS = {
    "spconv.pytorch": "pip install spconv (CPU) or spconv-cu126 (CUDA 12.x); see README.md",
    "torch_scatter": "pip install --no-build-isolation torch-scatter (builds from source, ~6 min)",
    "pytorch3d": "conda install -c pytorch3d pytorch3d (see environment.yml); there is no PyPI wheel",
}


@functools.lru_cache(maxsize=None)
def _probe(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        # absent: the missing module is the one asked for or a package above it (spconv for spconv.pytorch); a
        # missing part below or beside it (spconv.core_cc, its compiled core) is a broken install
        parts = module.split(".")
        if error.name in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}:
            return None
        raise


def _require(module: str):
    found = _probe(module)
    if found is None:
        raise ModuleNotFoundError(f"optional backend '{module}' is not installed: {_INSTALL_HINTS[module]}")
    return found


def has_spconv() -> bool:
    return _probe("spconv.pytorch") is not None


def has_torch_scatter() -> bool:
    return _probe("torch_scatter") is not None


def has_pytorch3d() -> bool:
    return _probe("pytorch3d") is not None


def require_spconv():
    """The ``spconv.pytorch`` module, with the CPU guard installed (see :mod:`oddsparse.ops.spconv_cpu`)."""
    module = _require("spconv.pytorch")
    from oddsparse.ops.spconv_cpu import install_cpu_guard

    install_cpu_guard()
    return module


def require_torch_scatter():
    return _require("torch_scatter")


def require_pytorch3d():
    module = _require("pytorch3d")
    importlib.import_module("pytorch3d.renderer")
    return module


def resolve_backend(backend: str, name: str) -> str:
    """Resolve ``"auto"`` to ``name`` when its module is installed, else ``"torch"``.

    ``backend`` must be ``"auto"``, ``"torch"`` or ``name``; asking for ``name`` when it is absent
    raises ``ModuleNotFoundError`` with an install hint.
    """
    probes = {"spconv": ("spconv.pytorch", has_spconv), "torch_scatter": ("torch_scatter", has_torch_scatter),
              "pytorch3d": ("pytorch3d", has_pytorch3d)}
    module, probe = probes[name]
    if backend == "auto":
        return name if probe() else "torch"
    if backend == "torch":
        return "torch"
    if backend == name:
        _require(module)
        return name
    raise ValueError(f"backend must be 'auto', 'torch' or '{name}', got {backend!r}")
