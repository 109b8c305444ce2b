"""Fixtures for the data tests (helpers live in data_helpers.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def id_npz(tmp_path: Path) -> Path:
    """96 8x8 images, image i filled with the value i + 1 and labelled i % 4: pixels identify samples."""
    n = 96
    x = np.repeat(np.arange(1, n + 1, dtype=np.uint8)[:, None, None], 8, axis=1).repeat(8, axis=2)
    path = tmp_path / "ids.npz"
    np.savez(path, x=x, y=np.arange(n) % 4, x_test=x[:8], y_test=np.arange(8) % 4)
    return path
