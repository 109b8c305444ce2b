"""`SearchConfig` (the `search:` section of a run config) and `run_search`, which dispatches on it."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from flexnas.errors import ConfigError, did_you_mean
from flexnas.search import evolution, nag, rea, uniform
from flexnas.search.archive import Archive
from flexnas.search.base import Evaluator, SearchResult
from flexnas.search.constraints import Constraint, check_feasible

if TYPE_CHECKING:
    from flexnas.spaces.base import SearchSpace

__all__ = ["STRATEGIES", "SearchConfig", "run_search"]

STRATEGIES = ("random", "evolution", "nag", "rea")


@dataclass
class SearchConfig:
    """How to search. `budget` counts distinct archs scored (archive hits included, see `Scorer`);
    `targets` are constraint strings such as 'macs<=300M' or '200M<=macs<=300M'."""

    strategy: str = "evolution"
    budget: int = 200
    population: int = 50
    parents: int = 10
    mutations: int = 25
    crossovers: int = 25
    mutation_prob: float = 0.1
    targets: list[str] = field(default_factory=list)
    seed: int = 0
    # strategy 'rea' (regularized evolution): `population` ages; parents are the best of `tournament`.
    tournament: int = 10
    # strategy 'nag' (flexnas/search/nag.py, docs/nag.md): conditional model, share of the budget drawn
    # uniformly before the first fit, archs per target per refit, accuracy/cost classes.
    nag_model: str = nag.DEFAULT_MODEL
    nag_warmup: float = 0.3
    nag_round: int = 16
    nag_classes: int = nag.CLASSES

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check values (not feasibility, which needs the space): called on construction and by
        `run_search`, so a config edited after loading is checked too."""
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown search strategy '{self.strategy}'{did_you_mean(self.strategy, STRATEGIES)}; "
                              f"choose one of {', '.join(STRATEGIES)}")
        for name in ("budget", "population", "parents", "mutations", "crossovers", "seed", "tournament"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"search.{name} must be an integer, got {v!r}")
        for name, lo in (("budget", 1), ("population", 1), ("parents", 1), ("mutations", 0), ("crossovers", 0),
                         ("tournament", 1)):
            if getattr(self, name) < lo:
                raise ConfigError(f"search.{name} must be >= {lo}, got {getattr(self, name)}")
        if self.mutations + self.crossovers < 1:
            raise ConfigError("search.mutations + search.crossovers must be at least 1")
        if isinstance(self.mutation_prob, bool) or not isinstance(self.mutation_prob, (int, float)) \
                or not 0.0 < self.mutation_prob <= 1.0:
            raise ConfigError(f"search.mutation_prob must be in (0, 1], got {self.mutation_prob!r}")
        if isinstance(self.targets, str) or not isinstance(self.targets, list):
            raise ConfigError(f"search.targets must be a list of constraint strings, got {self.targets!r}")
        for t in self.targets:
            Constraint.parse(t)
        if self.nag_model not in nag.MODELS:
            hint = did_you_mean(str(self.nag_model), nag.MODELS)
            raise ConfigError(f"unknown search.nag_model '{self.nag_model}'{hint}; "
                              f"choose one of {', '.join(nag.MODELS)}")
        if isinstance(self.nag_warmup, bool) or not isinstance(self.nag_warmup, (int, float)) \
                or not 0.0 <= self.nag_warmup <= 1.0:
            raise ConfigError(f"search.nag_warmup must be a fraction in [0, 1], got {self.nag_warmup!r}")
        for name, lo, hi in (("nag_round", 1, None), ("nag_classes", 2, nag.MAX_CLASSES)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
                raise ConfigError(f"search.{name} must be an integer >= {lo}" + (f" and <= {hi}" if hi else "")
                                  + f", got {v!r}")

    def constraints(self) -> list[Constraint]:
        return [Constraint.parse(t) for t in self.targets]


def run_search(space: "SearchSpace", evaluator: Evaluator, cfg: SearchConfig, archive: Optional[Archive] = None,
               progress: bool = False) -> SearchResult:
    """Run the strategy `cfg` names, seeded from `cfg.seed`; rerunning the same config on the same
    archive replays the search without re-evaluating anything (and continues if it was cut short)."""
    cfg.validate()
    constraints = cfg.constraints()
    check_feasible(constraints, space.cost_model())
    rng = random.Random(cfg.seed)
    if cfg.strategy == "random":
        return uniform.search(space, evaluator, constraints, cfg.budget, rng, archive, progress,
                              tag="random", seed=cfg.seed)
    if cfg.strategy == "rea":
        return rea.search(space, evaluator, constraints, cfg.budget, rng, archive, progress,
                          population=cfg.population, sample_size=cfg.tournament, tag="rea", seed=cfg.seed)
    if cfg.strategy == "nag":
        return nag.search(space, evaluator, constraints, cfg.budget, rng, archive, progress,
                          model=cfg.nag_model, warmup=float(cfg.nag_warmup), round_size=cfg.nag_round,
                          classes=cfg.nag_classes, tag="nag", seed=cfg.seed)
    return evolution.search(space, evaluator, constraints, cfg.budget, rng, archive, progress,
                            population=cfg.population, parents=cfg.parents, mutations=cfg.mutations,
                            crossovers=cfg.crossovers, mutation_prob=float(cfg.mutation_prob),
                            tag="evolution", seed=cfg.seed)
