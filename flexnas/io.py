"""Atomic file writes: a killed process never leaves a half-written checkpoint, cache, table or report
that a later run would trust. One implementation for every file flexnas writes."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Union

import torch

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["atomic_write", "atomic_torch_save", "atomic_json", "atomic_text"]


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], object], fsync: bool = False) -> Path:
    """Call `write(file)` on a temp file in `path`'s folder, then `os.replace` it onto `path`.

    The same folder matters: `os.replace` is only atomic within one file system. `fsync` also forces
    the bytes and the rename to disk (checkpoints: survive a power cut, not only a kill)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if fsync:
        _fsync_dir(path.parent)
    return path


def atomic_torch_save(obj: Any, path: PathLike, fsync: bool = False) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f), fsync=fsync)


def atomic_json(path: PathLike, data: Any, indent: int = 1) -> Path:
    return atomic_write(path, lambda f: f.write(json.dumps(data, indent=indent).encode("utf-8")))


def atomic_text(path: PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _fsync_dir(folder: Path) -> None:
    """Persist a rename (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
