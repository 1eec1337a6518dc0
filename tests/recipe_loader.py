"""Import a script of ``recipes/`` (flat scripts, not a package) as a module for the tests."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def load_recipe(name: str):
    """The module of ``recipes/<name>.py``, registered as ``recipe_<name>`` in ``sys.modules`` (dataclasses
    resolve their annotations through it)."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
