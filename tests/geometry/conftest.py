"""Make tests/geometry/sample_scene.py and cameras_fixture.py importable (tests/ itself is on the path
through ``pythonpath`` in pyproject.toml)."""
import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
