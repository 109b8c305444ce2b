import pytest

from flexnas import spaces


@pytest.fixture(scope="session")
def space():
    """The tiny proxyless space (8x8 inputs); its cost tables are built once per session."""
    s = spaces.get("proxyless", input_size=8, num_classes=10, width_mult=0.25)
    s.cost_model()
    return s
