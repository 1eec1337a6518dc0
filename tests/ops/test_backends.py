"""Optional-backend probing: a module that is not installed is absent; an installed one whose own parts are
missing (a broken install) raises its real error instead of passing for absent."""
from __future__ import annotations

import sys

import pytest

from oddsparse._backends import _probe


def test_absent_module_and_absent_parent_package_read_as_absent(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _probe("oddsparse_no_such_backend") is None
    assert _probe("oddsparse_no_such_backend.pytorch") is None  # the package above it is missing


def test_a_broken_install_raises_its_real_error(monkeypatch, tmp_path):
    """Like spconv whose compiled core is missing: spconv.pytorch imports spconv.core_cc, which is not there."""
    package = tmp_path / "oddsparse_broken_backend"
    (package / "pytorch").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "pytorch" / "__init__.py").write_text("import oddsparse_broken_backend.core_cc\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as info:
        _probe("oddsparse_broken_backend.pytorch")
    assert info.value.name == "oddsparse_broken_backend.core_cc"
    for name in [m for m in sys.modules if m.startswith("oddsparse_broken_backend")]:
        monkeypatch.delitem(sys.modules, name)
