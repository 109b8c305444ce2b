import random
from pathlib import Path

import pytest
import torch

from flexnas import spaces

REPO = Path(__file__).resolve().parents[1]
CIFAR10 = REPO.parent / "shared" / "data" / "cifar10"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    # One thread: these tiny nets are overhead-bound, and two threads thrash on a busy 2-core machine.
    torch.set_num_threads(1)


@pytest.fixture
def rng():
    return random.Random(0)


def small_space(name: str, **kw):
    """A fast variant of a registered space for tests: CIFAR strides, narrow."""
    kw.setdefault("input_size", 32)
    kw.setdefault("num_classes", 10)
    kw.setdefault("width_mult", 0.5)
    return spaces.get(name, **kw)


ALL_SPACES = spaces.names()


def drawn_latency_bound(space, cost_model, quantile: float = 0.3, draws: int = 200) -> float:
    """A `latency_ms` bound that uniform draws reach on any machine. The middle of the range is not such a
    bound: a sum of many per-layer timings concentrates, and where depends on the table measured here."""
    import numpy as np

    rng = random.Random(4)
    drawn = cost_model.costs([space.sample(rng) for _ in range(draws)])["latency_ms"]
    return float(np.quantile(drawn, quantile))
