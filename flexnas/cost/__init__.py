"""Hardware cost: exact lookup tables of MACs and parameters per (layer, choice)."""
from flexnas.cost.counter import count
from flexnas.cost.model import CostModel

__all__ = ["CostModel", "count"]
