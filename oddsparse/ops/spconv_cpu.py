"""Make spconv 2.3.8 correct on CPU: the only module of oddsparse that touches spconv internals.

spconv's CPU wheel has two faults on a machine without CUDA:

1. Every backward (and some forwards) of ``spconv.pytorch.ops`` calls ``get_current_stream()``,
   which asks CUDA for its current stream and raises. On CPU the stream argument of spconv's
   C++ ops is ignored and must be 0.
2. With more than one torch thread, its CPU gather-mm-scatter convolution (``indice_conv`` and
   its backward) intermittently returns wrong values (a race; the rulebook itself is right).
   Measured on 2 threads (10^3 grid, 15% occupied, 4 -> 8 channels): 19% of SubMConv3d, 62% of
   SparseConv3d (stride 2), 25% of SparseInverseConv3d forwards and 35% of SubMConv3d backwards
   wrong; each call was also ~50-100x slower than on one thread.

:func:`install_cpu_guard` fixes both by patching names in the ``spconv.pytorch.ops`` namespace,
where ``spconv.pytorch.functional``, ``conv`` and ``pool`` look them up at call time:

- ``get_current_stream`` returns 0 (installed only when CUDA is unavailable, so no tensor can be
  on a GPU);
- the convolution and pooling ops (forward and backward) run with ``torch.set_num_threads(1)``
  when their first tensor argument is on the CPU, and the previous thread count is restored
  afterwards. The thread count is process-wide: another Python thread running torch ops at the
  same moment runs them single-threaded too.

Nothing is patched when ``torch.cuda.is_available()``. ``import oddsparse`` calls
:func:`maybe_install_cpu_guard`, so plain spconv layers in a user's own code are correct as well.

Example:
    >>> from oddsparse.ops.spconv_cpu import install_cpu_guard, is_cpu_guard_installed
    >>> install_cpu_guard() == is_cpu_guard_installed()
    True
"""
from __future__ import annotations

import functools
import importlib
import sys

import torch

__all__ = ["install_cpu_guard", "uninstall_cpu_guard", "is_cpu_guard_installed", "maybe_install_cpu_guard",
           "GUARDED_OPS"]

GUARDED_OPS = (
    "indice_conv", "indice_conv_backward", "fused_indice_conv",
    "implicit_gemm", "implicit_gemm_backward",
    "indice_maxpool", "indice_maxpool_backward",
    "indice_maxpool_implicit_gemm", "indice_maxpool_implicit_gemm_backward",
    "indice_avgpool_implicit_gemm", "indice_avgpool_implicit_gemm_backward",
)
"""Functions of ``spconv.pytorch.ops`` run single-threaded on CPU tensors by the guard."""

_MARK = "_oddsparse_cpu_guard"  # attribute set on every replacement, so state survives reloads of this module


def _spconv_ops():
    return importlib.import_module("spconv.pytorch.ops")


def _first_tensor(args, kwargs):
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    return None


def _single_threaded_on_cpu(function):
    """Wrap an ops function so that it runs with one torch thread when its first tensor is on the CPU."""

    @functools.wraps(function)
    def guarded(*args, **kwargs):
        tensor = _first_tensor(args, kwargs)
        previous = torch.get_num_threads()
        if tensor is None or tensor.is_cuda or previous == 1:
            return function(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return function(*args, **kwargs)
        finally:
            torch.set_num_threads(previous)

    setattr(guarded, _MARK, True)
    return guarded


def is_cpu_guard_installed() -> bool:
    """True when spconv is imported and its ``ops`` namespace carries the guard."""
    ops = sys.modules.get("spconv.pytorch.ops")
    return ops is not None and bool(getattr(ops.get_current_stream, _MARK, False))


def install_cpu_guard() -> bool:
    """Patch ``spconv.pytorch.ops`` for correct CPU execution (idempotent).

    Returns:
        True when the guard is installed after the call; False when CUDA is available (nothing
        is patched then).

    Raises:
        ModuleNotFoundError: spconv is not installed.
    """
    if torch.cuda.is_available():
        return False
    ops = _spconv_ops()
    if getattr(ops.get_current_stream, _MARK, False):
        return True
    for name in GUARDED_OPS:
        original = getattr(ops, name, None)
        if original is not None and not getattr(original, _MARK, False):
            setattr(ops, name, _single_threaded_on_cpu(original))

    def get_current_stream() -> int:
        """Stream handle for spconv's C++ ops: 0, since CUDA is unavailable when this is installed."""
        return 0

    get_current_stream.__wrapped__ = ops.get_current_stream
    setattr(get_current_stream, _MARK, True)
    ops.get_current_stream = get_current_stream  # last: marks the whole guard as installed
    return True


def uninstall_cpu_guard() -> None:
    """Restore the original functions of ``spconv.pytorch.ops`` (for tests); no-op when not installed."""
    if not is_cpu_guard_installed():
        return
    ops = _spconv_ops()
    for name in (*GUARDED_OPS, "get_current_stream"):
        current = getattr(ops, name, None)
        if current is not None and getattr(current, _MARK, False):
            setattr(ops, name, current.__wrapped__)


def maybe_install_cpu_guard() -> bool:
    """Install the guard when spconv is installed and CUDA is not available; called by ``import oddsparse``.

    Returns True when the guard is installed after the call. Importing spconv costs ~0.2 s after torch.
    """
    if torch.cuda.is_available():
        return False
    from oddsparse._backends import has_spconv

    if not has_spconv():  # only ModuleNotFoundError for spconv itself counts as "not installed"
        return False
    return install_cpu_guard()
