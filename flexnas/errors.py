"""Exceptions a user can cause. The CLI prints their message on one line and exits non-zero."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class FlexnasError(Exception):
    """Base class for errors caused by user input (never by a bug in flexnas)."""


class ArchError(FlexnasError, ValueError):
    """An architecture string or choice tuple that the space cannot express."""


class SpaceError(FlexnasError, ValueError):
    """An unknown space, or space arguments that cannot build a network."""


class ConfigError(FlexnasError, ValueError):
    """A configuration key or value that is not valid."""


class ConstraintError(FlexnasError, ValueError):
    """A malformed or infeasible hardware constraint."""


class DataError(FlexnasError, ValueError):
    """Missing or malformed data."""


class CheckpointError(FlexnasError, ValueError):
    """A corrupt, missing or mismatched checkpoint."""


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or '' when none is close."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class ExportError(FlexnasError, RuntimeError):
    """A model that cannot be written in the asked format (an ONNX opset that cannot express an op),
    or whose written file does not reproduce the PyTorch model."""
