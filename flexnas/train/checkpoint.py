"""Atomic checkpoints: a crash mid-write never leaves a half-written `checkpoint.pt` behind, and a
checkpoint from a different run is refused with the field that differs, never silently restarted."""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch

from flexnas.errors import CheckpointError
from flexnas.io import atomic_torch_save

__all__ = ["save_checkpoint", "load_checkpoint", "check_meta", "FORMAT_VERSION"]

FORMAT_VERSION = 1

# Meta fields that do not change what the run computes: a difference is only worth a warning.
_INFORMATIONAL = ("flexnas_version",)

PathLike = Union[str, "os.PathLike[str]"]


def save_checkpoint(path: PathLike, state: Mapping[str, Any]) -> Path:
    """Write `state` to `path` atomically: temp file in the same folder, fsync, `os.replace`.

    The same folder matters: `os.replace` is only atomic within one file system."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(state)
    payload.setdefault("format_version", FORMAT_VERSION)
    return atomic_torch_save(payload, path, fsync=True)


def load_checkpoint(path: PathLike, expected_meta: Optional[Mapping[str, Any]] = None,
                    map_location: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint`; with `expected_meta`, refuse a mismatch.

    Loads with `weights_only=True`, so a checkpoint cannot run code; everything flexnas stores
    (tensors, numbers, strings, lists, dicts) passes."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for bad bytes
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {reason}; "
                              f"delete it to start over") from None
    if not isinstance(state, dict) or "meta" not in state or not isinstance(state["meta"], dict):
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: it holds no 'meta' record; "
                              f"delete it to start over")
    version = state.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version!r}, this flexnas reads "
                              f"version {FORMAT_VERSION}; delete it to start over")
    if expected_meta is not None:
        check_meta(state["meta"], expected_meta, path)
    return state


def _flatten(meta: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in meta.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def check_meta(saved: Mapping[str, Any], expected: Mapping[str, Any], path: PathLike = "checkpoint") -> None:
    """Raise CheckpointError naming every field where `saved` differs from `expected`.

    Nested dicts are compared field by field, so the message says `space.width_mult` or
    `config.lr`, not just 'meta differs'."""
    got, want = _flatten(saved), _flatten(expected)
    # With the config stored field by field, the per-field lines say more than the hash does.
    per_field = any(k.startswith("config.") for k in got) and any(k.startswith("config.") for k in want)
    diffs, notes = [], []
    for key in sorted(set(got) | set(want)):
        if key == "config_hash" and per_field:
            continue
        a, b = got.get(key, "<missing>"), want.get(key, "<missing>")
        if a == b:
            continue
        line = f"{key}: checkpoint has {a!r}, this run has {b!r}"
        (notes if key in _INFORMATIONAL else diffs).append(line)
    if notes:
        warnings.warn(f"resuming {path} written by another flexnas version ({'; '.join(notes)})",
                      stacklevel=3)
    if diffs:
        raise CheckpointError(f"checkpoint {path} belongs to a different run ({'; '.join(diffs)}); "
                              f"resume with the original settings or use a new run folder")
