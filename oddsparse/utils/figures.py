"""Figures: every PNG a report or recipe writes goes through :func:`save_figure`."""
from __future__ import annotations

import os
from pathlib import Path

from .checkpoint import atomic_write

__all__ = ["save_figure", "interval_error"]


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 100, **savefig_kwargs) -> Path:
    """Write matplotlib figure ``fig`` to ``path`` as a PNG atomically (:func:`atomic_write`), then close it.

    An interrupted or failed write leaves an earlier ``path`` as it was and no temporary file; the
    parent folder is created. ``savefig_kwargs`` go to ``fig.savefig`` (``bbox_inches``, ...).
    Returns ``path``.
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        atomic_write(path, lambda file: fig.savefig(file, format="png", dpi=dpi, **savefig_kwargs))
    finally:
        plt.close(fig)
    return path


def interval_error(value: float, low: float, high: float) -> list[list[float]]:
    """Asymmetric error-bar lengths ``[[value - low], [high - value]]`` of ``value`` with its interval, for
    matplotlib's ``yerr`` / ``xerr``, each clamped at 0: a bootstrap interval of equal per-scene values is the
    report's value only up to rounding (its bound can sit a hair inside it), and matplotlib refuses a negative
    length.

    Example:
        >>> interval_error(0.7, 0.7000000000000001, 0.8)  # a lower bound a rounding hair above the value
        [[0.0], [0.10000000000000009]]
    """
    return [[max(0.0, value - low)], [max(0.0, high - value)]]
