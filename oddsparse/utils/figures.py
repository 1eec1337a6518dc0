"""Figures: every PNG a report or recipe writes goes through :func:`save_figure`."""
from __future__ import annotations

import os
from pathlib import Path

from .checkpoint import atomic_write

__all__ = ["save_figure"]


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
