"""Checkpoints: atomic writes, weights-only loading, resume.

A checkpoint is a ``torch.save`` dict of tensors and plain Python values (config as ``asdict``,
step counters, RNG states as tensors). It is written to a temporary file in the same folder and
renamed over the target, so an interrupted write never leaves a truncated checkpoint; loading
uses ``weights_only=True`` so a checkpoint never executes code.
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
import torch

__all__ = ["CheckpointError", "WriteError", "save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state",
           "atomic_write", "atomic_write_bytes", "default_file_mode", "state_fingerprint"]


class CheckpointError(ValueError):
    """A file is not a loadable oddsparse checkpoint (it needs code to unpickle, or lacks a field); the message
    names the file."""


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: 0o666 less the process umask.

    ``tempfile.mkstemp`` creates 0o600 files; atomic writes chmod their temporary file to this
    before renaming it, so a report or checkpoint reads like any other file the user writes. The umask is
    read from ``/proc/self/status`` where Linux gives it (4.7 and later); elsewhere it is set and put back,
    which another thread creating a file in between would see.
    """
    mask = _umask_from_proc()
    if mask is None:
        mask = os.umask(0)
        os.umask(mask)
    return 0o666 & ~mask


def _umask_from_proc() -> int | None:
    """The process umask as ``/proc/self/status`` states it (``Umask:\t0022``), or None where it does not."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        return None
    return None


class WriteError(OSError):
    """A file could not be written (:func:`atomic_write`): the message names it, the bytes written and the space
    left on its disk."""


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it over ``path``.

    An interrupted write never leaves a truncated ``path``; the finished file gets the mode a plain
    ``open()`` gives (:func:`default_file_mode`), not mkstemp's 0o600. A failed write (``OSError``, or
    the ``RuntimeError`` torch.save raises when its file write fails, as on a full disk) is raised as a
    :class:`WriteError` (an ``OSError``) naming ``path``, the bytes written before the failure and the space
    left on its disk.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:  # no folder or no temporary file there: name the file asked for, not the temporary one
        raise WriteError(f"{path}: cannot be written ({type(error).__name__}: {error.strerror or error})") from error
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        if os.path.exists(tmp):
            os.unlink(tmp)
        free = shutil.disk_usage(path.parent).free
        raise WriteError(f"{path}: writing failed after {written / 2**20:.1f} MiB, with {free / 2**20:.1f} MiB free "
                      f"on its disk ({type(error).__name__}: {error})") from error
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda file: file.write(data))


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Atomically ``torch.save`` ``payload`` to ``path`` (:func:`atomic_write`)."""
    atomic_write(path, lambda file: torch.save(payload, file))


def load_checkpoint(path: str | os.PathLike, map_location="cpu", *, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` without unpickling code.

    ``mmap``: map the tensors' storage from the file instead of reading it (pages are read when a tensor is
    used): cheap where only a few fields are looked at.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if isinstance(map_location, (str, torch.device)):  # a device this machine lacks is no fault of the file
        from oddsparse.utils.errors import InputError

        try:
            device = torch.device(map_location)
        except RuntimeError as error:
            raise InputError(f"device {map_location!r} is not a torch device ({error})") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"device {map_location!r}: CUDA is not available on this machine (pass cpu)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as error:  # the pickle-free loader names what it refused
        import zipfile

        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"{path}: not a checkpoint (not a torch.save zip archive)") from error
        reason = " ".join(str(error).split())  # torch's message spans lines; this one names what was refused
        raise CheckpointError(f"{path}: not a valid oddsparse checkpoint (weights-only load failed: "
                              f"{reason})") from error


def state_fingerprint(state: dict[str, Any], extra: Any = None) -> str:
    """SHA-1 of a ``state_dict`` (names, dtypes, shapes and bytes of every tensor, in name order; nested dicts,
    lists and tuples, as an optimizer's state, entry by entry) and of ``extra`` (any JSON value, e.g. the settings
    a result was computed with): equal exactly when both are equal. Every field is tagged and length-prefixed, so
    that no two different states hash the same bytes."""
    import hashlib
    import json

    digest = hashlib.sha1()

    def field(tag: bytes, data: bytes) -> None:
        digest.update(tag + len(data).to_bytes(8, "little") + data)

    def visit(value) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu()
            field(b"T", f"{tensor.dtype}{tuple(tensor.shape)}".encode())
            flat = tensor.contiguous().reshape(-1)  # 0-dim tensors too
            field(b"B", flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
        elif isinstance(value, dict):
            field(b"D", str(len(value)).encode())
            for key in sorted(value, key=repr):
                field(b"K", repr(key).encode())
                visit(value[key])
        elif isinstance(value, (list, tuple)):
            field(b"L" if isinstance(value, list) else b"U", str(len(value)).encode())
            for item in value:
                visit(item)
        else:
            field(b"V", repr(value).encode())

    visit(dict(state))
    field(b"X", json.dumps(extra, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors/lists (weights-only loadable)."""
    np_state = np.random.get_state()
    python_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_gauss": [int(np_state[3]), float(np_state[4])],  # a normal drawn in a pair, kept for the next draw
        "python": torch.tensor(python_state[1], dtype=torch.int64),
        "python_gauss": python_state[2],  # likewise, random.gauss's (None or a float)
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s states; its tensors may have been loaded onto another device (``map_location``)."""
    torch.set_rng_state(state["torch"].cpu())
    keys = state["numpy_keys"].cpu().numpy().astype(np.uint32)
    has_gauss, cached = state.get("numpy_gauss", (0, 0.0))  # absent from checkpoints of earlier versions
    np.random.set_state(("MT19937", keys, state["numpy_pos"], int(has_gauss), float(cached)))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), state.get("python_gauss")))
