"""Constrained search: targets (`Constraint`), the SQLite `Archive`, random and evolution searchers.

    from flexnas.search import SearchConfig, run_search, Archive
    result = run_search(space, evaluator, SearchConfig(targets=["macs<=300M"]),
                        archive=Archive("runs/demo/archive.sqlite", space))
    result.best["macs<=300M"].text, result.pareto()

`Generator` (SGNAS-style) is fitted once through the supernet, then maps targets to archs in one
forward pass: `Generator(space).fit(supernet, space, batches)`, `.generate(["macs<=300M"])`.
"""
from flexnas.search.archive import Archive
from flexnas.search.base import Evaluator, Record, SearchResult, best_per_target, pareto_front
from flexnas.search.constraints import Constraint, check_feasible
from flexnas.search.evolution import search as evolution_search
from flexnas.search.generator import Generator, GeneratorConfig
from flexnas.search.runner import STRATEGIES, SearchConfig, run_search
from flexnas.search.uniform import search as random_search

__all__ = [
    "Archive", "Constraint", "Evaluator", "Generator", "GeneratorConfig", "Record", "STRATEGIES", "SearchConfig", "SearchResult",
    "best_per_target", "check_feasible", "evolution_search", "pareto_front", "random_search", "run_search",
]
