"""flexnas: one-shot neural architecture search on PyTorch."""
from flexnas.arch import Arch
from flexnas.errors import ArchError, FlexnasError

__all__ = ["Arch", "ArchError", "FlexnasError"]
__version__ = "0.1.0"
