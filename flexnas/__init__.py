"""flexnas: one-shot neural architecture search on PyTorch."""
from flexnas.arch import Arch
from flexnas.errors import ArchError, FlexnasError

__all__ = ["Arch", "ArchError", "FlexnasError", "load"]
__version__ = "0.1.0"


def load(path):  # type: ignore[no-untyped-def]
    """Rebuild a model written by `flexnas export` from its model card (see `flexnas.export.load`)."""
    from flexnas.export import load as _load

    return _load(path)
