"""A constraint-conditioned architecture generator (SGNAS-style): fit once, then N targets -> N archs
in one forward pass.

After the supernet is trained, a small MLP learns to map target cost(s) to per-choice-point logits.
It is trained through the *frozen* supernet: each step samples targets uniformly over the space's
exact feasible range and minimises

    cost_weight * asymmetric penalty(CostModel.expected(drawn archs), targets) + ce_weight * CE term

The cost term draws archs with a straight-through Gumbel-softmax (hard one-hot forward, soft
gradient, annealed temperature) for many targets per step (the cost model is vectorised and cheap).
The cross-entropy term (`ce_estimator`) is either SGNAS's: the supernet's mixture forward on one
drawn arch, backpropagated through the same straight-through relaxation (`gumbel`); or a policy
gradient (`reinforce`, the default): a few single-path archs drawn for one target, scored on the
same images, each rewarded by how much lower its loss is than its cost predicts.
Generation takes the most likely arch within [target * (1 - decode_band), target] (`decode: budget`,
flexnas/search/budget.py) or the argmax per choice point (`decode: argmax`), then `space.repair`.

    gen = Generator(space, metrics=("macs",))
    gen.fit(supernet, space, data.train)        # CE images (`ce_data`: train, or val as SGNAS)
    gen.generate(["macs<=1.2M", 0.8e6])        # -> [Arch, Arch]
    gen.save("runs/quickstart/generator.pt"); Generator.load(path, space)

The supernet's weights and BN buffers never change; generated archs are scored with BN
recalibration (`SupernetEvaluator`).
"""
from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flexnas.arch import Arch
from flexnas.errors import CheckpointError, ConfigError, ConstraintError, DataError, did_you_mean
from flexnas.io import atomic_torch_save
from flexnas.search.constraints import Constraint, _format_range, _number, format_value, metric_unit

if TYPE_CHECKING:
    from flexnas.spaces.base import SearchSpace

__all__ = ["Generator", "GeneratorConfig", "Target", "parse_target", "spread_targets", "targeting_stats"]

FORMAT = "flexnas-generator"
VERSION = 1

# One target: a number (raw count for a single-metric generator), a string ('1.2M', 'macs<=1.2M',
# 'macs<=1.2M,params<=0.3M'), or a mapping metric -> number/string.
Target = Union[float, int, str, Mapping[str, Union[float, int, str]]]


CE_BN = ("running", "batch")  # BatchNorm statistics in the cross-entropy forward (docs/generator.md)
# The run's image stream a pipeline fit draws its cross-entropy batches from: the supernet's training
# split, or the search-validation split (as SGNAS, which trains its generator on the validation loader;
# with the default estimator: better on the quickstart, much worse on reduced CIFAR-10, docs/generator.md).
CE_DATA = ("train", "val")
# How the cross-entropy reaches the generator: through a straight-through Gumbel-softmax mixture forward
# (SGNAS), or as a policy-gradient reward of single-path archs drawn from it (docs/generator.md).
CE_ESTIMATORS = ("gumbel", "reinforce")
# How `generate` turns logits into an arch: per-point argmax, or the most likely arch inside the
# budget window [target * (1 - decode_band), target] (flexnas/search/budget.py).
DECODES = ("argmax", "budget")
DEFAULT_DECODE = "budget"
DECODE_BAND = 0.04
PRIOR_BAND = 0.02  # a prior pool arch costs within +-2% of its level
PRIOR_DRAWS = 8192  # uniform draws per level before walking in from the space's extremes


def _check_decode(decode: str, band: float) -> None:
    if decode not in DECODES:
        raise ConfigError(f"generator decode must be one of {', '.join(DECODES)}, got {decode!r}"
                          f"{did_you_mean(str(decode), DECODES)}")
    if isinstance(band, bool) or not isinstance(band, (int, float)) or not 0 < band < 1:
        raise ConfigError(f"generator decode_band (the budget window below the target) must be in (0, 1), "
                          f"got {band!r}")


@dataclass
class GeneratorConfig:
    """The `generator:` section of a run config. `metrics`, `hidden`, `frequencies`, `prior_pool` and
    `seed` shape the network; the rest are fitting knobs (docs/generator.md explains each and how the
    defaults were chosen on the quickstart)."""

    metrics: list[str] = field(default_factory=lambda: ["macs"])
    hidden: int = 64
    frequencies: int = 4
    steps: int = 1000
    lr: float = 0.01
    tau_start: float = 5.0
    tau_end: float = 0.5
    cost_weight: float = 80.0
    over_weight: float = 2.0
    tolerance: float = 0.02
    cost_targets: int = 64
    ce_weight: float = 1.0
    # Defaults measured on reduced CIFAR-10 (docs/generator.md): each batch's own BN statistics on 64
    # images every step rank archs as recalibrated scoring does; the running statistics do not.
    ce_every: int = 1
    image_batch: int = 64
    ce_archs: int = 1
    ce_bn: str = "batch"
    ce_data: str = "train"
    ce_estimator: str = "reinforce"
    policy_archs: int = 8  # reinforce: archs drawn per step for one target, all on the same images
    prior_pool: int = 0
    seed: int = 0
    # Generation, not fitting: how logits become an arch (DECODES) and the budget window's width.
    decode: str = DEFAULT_DECODE
    decode_band: float = DECODE_BAND

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if isinstance(self.metrics, str) or not isinstance(self.metrics, list) or not self.metrics:
            raise ConfigError(f"generator.metrics must be a non-empty list such as ['macs'], got {self.metrics!r}")
        if len(set(self.metrics)) != len(self.metrics):
            raise ConfigError(f"generator.metrics repeat: {self.metrics}")
        for name, lo in (("hidden", 4), ("frequencies", 0), ("steps", 1), ("cost_targets", 1), ("ce_every", 1),
                         ("image_batch", 1), ("ce_archs", 1), ("policy_archs", 1), ("prior_pool", 0),
                         ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"generator.{name} must be an integer >= {lo}, got {v!r}")
        for name in ("lr", "tau_start", "tau_end", "cost_weight", "over_weight", "tolerance", "ce_weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"generator.{name} must be a finite number >= 0, got {v!r}")
        if self.lr <= 0:
            raise ConfigError(f"generator.lr must be > 0, got {self.lr}")
        if not 0 < self.tau_end <= self.tau_start:
            raise ConfigError(f"generator temperatures need 0 < tau_end <= tau_start, got "
                              f"{self.tau_start} -> {self.tau_end}")
        if self.ce_bn not in CE_BN:
            raise ConfigError(f"generator.ce_bn must be one of {', '.join(CE_BN)}, got {self.ce_bn!r}"
                              f"{did_you_mean(str(self.ce_bn), CE_BN)}")
        if self.ce_estimator not in CE_ESTIMATORS:
            raise ConfigError(f"generator.ce_estimator must be one of {', '.join(CE_ESTIMATORS)}, got "
                              f"{self.ce_estimator!r}{did_you_mean(str(self.ce_estimator), CE_ESTIMATORS)}")
        if self.ce_estimator == "reinforce" and self.policy_archs < len(self.metrics) + 2:
            raise ConfigError(f"generator.ce_estimator=reinforce scores each drawn arch against a regression of "
                              f"the cross-entropy on its {len(self.metrics)} cost metric(s) over the step's archs, "
                              f"which needs policy_archs >= {len(self.metrics) + 2}, got {self.policy_archs}")
        _check_decode(self.decode, self.decode_band)
        if self.ce_data not in CE_DATA:
            raise ConfigError(f"generator.ce_data must be one of {', '.join(CE_DATA)}, got {self.ce_data!r}"
                              f"{did_you_mean(str(self.ce_data), CE_DATA)}")
        if self.ce_archs > min(self.image_batch, self.cost_targets):
            raise ConfigError(f"generator.ce_archs={self.ce_archs} needs at least as many images per step "
                              f"(image_batch={self.image_batch}) and targets (cost_targets={self.cost_targets})")
        if self.ce_bn == "batch" and self.image_batch // self.ce_archs < 2:
            raise ConfigError(f"generator.ce_bn=batch normalises with each arch's own batch statistics, which "
                              f"need at least 2 images per arch; image_batch={self.image_batch} over "
                              f"ce_archs={self.ce_archs} gives {self.image_batch // self.ce_archs}")
        if self.cost_weight == 0 and self.ce_weight == 0:
            raise ConfigError("generator.cost_weight and generator.ce_weight are both 0: nothing to fit")

    def replace(self, **changes: Any) -> "GeneratorConfig":
        """A copy with `changes` (None values ignored); an unknown knob raises ConfigError."""
        names = [f.name for f in dataclasses.fields(self)]
        for key in changes:
            if key not in names:
                raise ConfigError(f"unknown generator knob '{key}'{did_you_mean(key, names)}; "
                                  f"valid: {', '.join(names)}")
        changes = {k: (list(v) if k == "metrics" else v) for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes)


def _constraint_value(c: Constraint) -> float:
    """The cost a constraint asks the generator for: its upper bound, its lower bound, or the middle
    of a two-sided range."""
    if c.low is not None and c.high is not None:
        return 0.5 * (c.low + c.high)
    return float(c.high if c.high is not None else c.low)  # type: ignore[arg-type]


def _unknown_metric(what: str, metric: str, metrics: Sequence[str]) -> ConstraintError:
    return ConstraintError(f"{what} is on '{metric}', but this generator was fitted for "
                           f"{', '.join(metrics)}{did_you_mean(metric, metrics)}")


def parse_target(target: Target, metrics: Sequence[str]) -> dict[str, float]:
    """One target -> {metric: raw value} for every metric of the generator."""
    metrics = tuple(metrics)
    out: dict[str, float] = {}
    if isinstance(target, Mapping):
        for key, value in target.items():
            if key not in metrics:
                raise _unknown_metric(f"target {dict(target)!r}", str(key), metrics)
            out[key] = _scalar(value, key)
    elif isinstance(target, str) and any(op in target for op in "<>="):
        for part in target.split(","):
            c = Constraint.parse(part.strip())
            if c.metric not in metrics:
                raise _unknown_metric(f"target '{part.strip()}'", c.metric, metrics)
            out[c.metric] = _constraint_value(c)
    else:
        if len(metrics) != 1:
            raise ConstraintError(f"a bare target {target!r} is ambiguous for a generator fitted on "
                                  f"{', '.join(metrics)}; write e.g. "
                                  f"'{','.join(m + '<=...' for m in metrics)}' or a dict")
        out[metrics[0]] = _scalar(target, metrics[0])
    missing = [m for m in metrics if m not in out]
    if missing:
        raise ConstraintError(f"target {target!r} gives no value for {', '.join(missing)}; this generator "
                              f"needs one per metric ({', '.join(metrics)})")
    return out


def _scalar(value: Any, metric: str) -> float:
    if isinstance(value, bool):
        raise ConstraintError(f"target for '{metric}' must be a number or a string like '1.2M', got {value!r}")
    if isinstance(value, (int, float, np.floating, np.integer)):
        v = float(value)
    elif isinstance(value, str):
        try:
            v = _number(value)
        except (ValueError, IndexError):
            raise ConstraintError(f"cannot read target {value!r} for '{metric}'; write a number with an "
                                  f"optional K/M/G suffix ('1.2M') or 'macs<=1.2M'") from None
    else:
        raise ConstraintError(f"target for '{metric}' must be a number or a string, got {type(value).__name__}")
    if not math.isfinite(v):
        raise ConstraintError(f"target for '{metric}' must be finite, got {value!r}")
    return v


def spread_targets(space: "SearchSpace", n: int = 20, metric: str = "macs") -> list[float]:
    """`n` targets spread evenly over the space's exact range: the midpoints of n equal bins (so neither
    the single smallest nor the single largest arch is asked for)."""
    lo, hi = space.cost_range(metric)
    return [lo + (i + 0.5) / n * (hi - lo) for i in range(n)]


def targeting_stats(rows: Sequence[Mapping[str, Any]], metric: str = "macs", band: float = 0.05) -> dict[str, Any]:
    """How well generated costs hit their targets: mean |cost - target| / target, the share within
    +-band, how many overshoot by more than band, and the extremes of the signed relative error."""
    err = np.array([(r[metric] - r[f"target_{metric}"]) / r[f"target_{metric}"] for r in rows])
    if err.size == 0:
        return {"n": 0}
    return {"n": int(err.size), "mean_abs_rel_error": float(np.abs(err).mean()),
            "within_band": float((np.abs(err) <= band).mean()), "over_band": int((err > band).sum()),
            "max_rel_error": float(err.max()), "min_rel_error": float(err.min()), "band": band}


class Generator(nn.Module):
    """target cost(s) -> per-choice-point logits (a list aligned with `space.choices`).

    The target enters as its position in the space's exact range on a log scale, [0, 1] per metric,
    expanded with sin/cos features so a small MLP can resolve nearby targets. The log scale gives the
    low end (where a fixed step in cost is the largest relative error) as much input resolution as the
    top.

    With `prior_pool=P > 0` the generator also takes a prior arch, as SGNAS does: a one-hot arch that
    enters the MLP and is added to its logits with a learned gain, so an unfitted generator returns
    its prior and fitting learns edits to it. Unless the caller passes priors, each target gets the
    arch of a pool whose P archs are drawn once (seeded) with costs within +-2% of P levels spread
    over the first metric's range: the one whose cost is nearest the target."""

    def __init__(self, space: "SearchSpace", metrics: Sequence[str] = ("macs",), hidden: int = 64,
                 frequencies: int = 4, seed: int = 0, prior_pool: int = 0) -> None:
        super().__init__()
        cost_model = space.cost_model()
        metrics = tuple(metrics)
        if not metrics:
            raise ConfigError("a generator needs at least one metric, e.g. metrics=('macs',)")
        for m in metrics:
            if m not in cost_model.metrics:
                raise ConfigError(f"unknown generator metric '{m}'{did_you_mean(m, cost_model.metrics)}; "
                                  f"the {space.name} cost model has {', '.join(cost_model.metrics)}")
        if len(set(metrics)) != len(metrics):
            raise ConfigError(f"generator metrics repeat: {metrics}")
        if hidden < 4 or frequencies < 0 or prior_pool < 0:
            raise ConfigError(f"generator needs hidden >= 4, frequencies >= 0 and prior_pool >= 0, got {hidden}, "
                              f"{frequencies}, {prior_pool}")
        self.space_name = space.name
        self.metrics = metrics
        self.hidden, self.frequencies, self.seed = int(hidden), int(frequencies), int(seed)
        self.prior_pool = int(prior_pool)
        self.option_counts = tuple(len(p.options) for p in space.choices)
        self.ranges = {m: tuple(float(v) for v in space.cost_range(m)) for m in metrics}
        for m, (lo, hi) in self.ranges.items():
            if lo <= 0:
                raise ConfigError(f"generator metric '{m}' needs a positive range, the {space.name} space "
                                  f"spans {lo:g}..{hi:g}")
        self._space = space
        self.info: dict[str, Any] = {}  # metadata saved with the file (fit config, final losses)
        n_options = sum(self.option_counts)
        n_in = len(metrics) * (1 + 2 * self.frequencies) + (n_options if self.prior_pool else 0)
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(self.seed)
            self.body = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
            self.out = nn.Linear(hidden, n_options)
            nn.init.normal_(self.out.weight, std=0.01)
            nn.init.zeros_(self.out.bias)
        if self.prior_pool:
            # Filled on first use (or by load_state_dict): drawing the pool samples the space.
            self.register_buffer("pool_choices", torch.zeros(self.prior_pool, len(self.option_counts),
                                                             dtype=torch.long))
            self.register_buffer("pool_positions", torch.zeros(self.prior_pool, dtype=torch.float64))
            self.register_buffer("pool_drawn", torch.zeros((), dtype=torch.bool))
            self.prior_gain = nn.Parameter(torch.tensor(1.0))
        # Choice points grouped by option count, so sampling runs once per group, not once per point.
        groups: dict[int, list[int]] = {}
        for i, n in enumerate(self.option_counts):
            groups.setdefault(n, []).append(i)
        self._groups = [(n, idx) for n, idx in groups.items()]

    @classmethod
    def from_config(cls, space: "SearchSpace", cfg: GeneratorConfig) -> "Generator":
        return cls(space, tuple(cfg.metrics), hidden=cfg.hidden, frequencies=cfg.frequencies, seed=cfg.seed,
                   prior_pool=cfg.prior_pool)

    # ---- targets ------------------------------------------------------------------------------
    def normalise(self, values: torch.Tensor, metric: str) -> torch.Tensor:
        """Raw cost -> position in the space's exact range on a log scale (0 = smallest, 1 = largest)."""
        lo, hi = self.ranges[metric]
        return (torch.log(values) - math.log(lo)) / max(math.log(hi) - math.log(lo), 1e-12)

    def target_tensor(self, targets: Sequence[Target]) -> torch.Tensor:
        """Raw (N, n_metrics) target values; a value outside the feasible range raises ConstraintError."""
        rows = []
        for t in targets:
            parsed = parse_target(t, self.metrics)
            for m, v in parsed.items():
                lo, hi = self.ranges[m]
                if not lo <= v <= hi:
                    raise ConstraintError(f"target {format_value(m, v)} {metric_unit(m)} is outside the "
                                          f"{self.space_name} space's feasible range "
                                          f"{_format_range(m, lo, hi)}")
            rows.append([parsed[m] for m in self.metrics])
        return torch.tensor(rows, dtype=torch.float64).reshape(len(rows), len(self.metrics))

    def _features(self, raw: torch.Tensor) -> torch.Tensor:
        z = torch.stack([self.normalise(raw[:, i], m) for i, m in enumerate(self.metrics)], -1).float()
        feats = [z]
        for k in range(self.frequencies):
            w = math.pi * (2 ** k)
            feats += [torch.sin(w * z), torch.cos(w * z)]
        return torch.cat(feats, -1)

    def forward(self, raw_targets: torch.Tensor, priors: Optional[torch.Tensor] = None) -> list[torch.Tensor]:
        """(N, n_metrics) raw target costs -> one (N, n_options) logit tensor per choice point.
        `priors`: (N, choice points) option indices of each target's prior arch; by default (and
        only used when `prior_pool > 0`) the pool arch nearest each target."""
        device = self.out.weight.device
        feats = self._features(raw_targets.to(device))
        if not self.prior_pool:
            return list(torch.split(self.out(self.body(feats)), self.option_counts, dim=-1))
        if priors is None:
            priors = self.pool_priors(raw_targets)
        one_hot = torch.cat([F.one_hot(priors[:, i].to(device), n) for i, n in enumerate(self.option_counts)],
                            -1).to(feats)
        logits = self.out(self.body(torch.cat([feats, one_hot], -1))) + self.prior_gain * one_hot
        return list(torch.split(logits, self.option_counts, dim=-1))

    # ---- prior archs (prior_pool > 0) -----------------------------------------------------------
    def _draw_pool(self) -> None:
        from flexnas.search.sampling import Sampler

        metric = self.metrics[0]
        rng = random.Random(self.seed)
        sampler = Sampler(self._space, rng)
        cost_model = self._space.cost_model()
        archs = []
        for level in spread_targets(self._space, self.prior_pool, metric):
            band = Constraint(metric, level * (1 - PRIOR_BAND), level * (1 + PRIOR_BAND))
            try:
                # `fresh` returns only new archs; in a band holding a single arch that is the walk's seed.
                found = sampler.fresh(band, 1, set(), [], 0.1, max_samples=PRIOR_DRAWS) or sampler.seeds(band)
            except ConstraintError:  # an empty band (a space with few distinct costs): the nearest arch
                near = [self._space.sample(rng) for _ in range(256)] + [cost_model.extreme(metric, False),
                                                                        cost_model.extreme(metric, True)]
                found = [near[int(np.abs(cost_model.costs(near)[metric] - level).argmin())]]
            archs.append(found[0])
        costs = cost_model.costs(archs)[metric]
        with torch.no_grad():
            self.pool_choices.copy_(torch.tensor([a.choices for a in archs], dtype=torch.long))
            self.pool_positions.copy_(self.normalise(torch.as_tensor(costs, dtype=torch.float64), metric))
            self.pool_drawn.fill_(True)

    def pool_priors(self, raw_targets: torch.Tensor) -> torch.Tensor:
        """(N, choice points): for each target, the pool arch whose cost (first metric) is nearest."""
        if not bool(self.pool_drawn):
            self._draw_pool()
        z = self.normalise(raw_targets[:, 0].to(self.pool_positions), self.metrics[0])
        nearest = (z[:, None] - self.pool_positions[None, :]).abs().argmin(-1)
        return self.pool_choices[nearest]

    def prior_tensor(self, priors: Sequence[Union[Arch, str, None]], raw_targets: torch.Tensor,
                     space: "SearchSpace") -> torch.Tensor:
        """Option indices of the given prior archs (arch strings are decoded); None takes the pool's."""
        if not self.prior_pool:
            raise ConfigError("this generator takes no prior arch; fit one with generator.prior_pool > 0")
        if len(priors) != len(raw_targets):
            raise ConfigError(f"got {len(priors)} prior archs for {len(raw_targets)} targets; give one per "
                              f"target (None: the pool's)")
        out = self.pool_priors(raw_targets).clone()
        for i, prior in enumerate(priors):
            if prior is not None:
                arch = space.decode(prior) if isinstance(prior, str) else space.validate(prior)
                out[i] = torch.tensor(arch.choices, dtype=torch.long)
        return out

    # ---- generation ---------------------------------------------------------------------------
    def _check_space(self, space: "SearchSpace") -> None:
        counts = tuple(len(p.options) for p in space.choices)
        if space.name != self.space_name or counts != self.option_counts:
            raise ConfigError(f"generator was built for space '{self.space_name}' with "
                              f"{len(self.option_counts)} choice points; got '{space.name}' with {len(counts)}")

    @staticmethod
    def _as_list(targets: Union[Target, Sequence[Target]]) -> list[Target]:
        if isinstance(targets, (str, Mapping)) or not isinstance(targets, Iterable):
            return [targets]  # type: ignore[list-item]
        return list(targets)

    @torch.no_grad()
    def generate(self, targets: Union[Target, Sequence[Target]], space: Optional["SearchSpace"] = None,
                 priors: Optional[Sequence[Union[Arch, str, None]]] = None, decode: str = DEFAULT_DECODE,
                 band: float = DECODE_BAND) -> list[Arch]:
        """One arch per target, all in one batched forward pass, repaired.
        `decode`: 'argmax' per choice point, or 'budget': the most likely arch whose cost lies in
        [target * (1 - band), target] for every metric (flexnas/search/budget.py; costs only, no supernet).
        `priors` (generators with a prior pool only): one prior arch per target, None for the pool's."""
        space = space or self._space
        self._check_space(space)
        _check_decode(decode, band)
        targets = self._as_list(targets)
        if not targets:
            return []
        raw = self.target_tensor(targets)
        prior = self.prior_tensor(priors, raw, space) if priors is not None else None
        was_training = self.training
        self.eval()
        try:
            logits = self(raw, prior)
        finally:
            self.train(was_training)
        if decode == "argmax":
            choices = torch.stack([lg.argmax(-1) for lg in logits], -1).cpu().tolist()
        else:
            choices = self._budget_choices(logits, raw, space, band)
        return [space.repair(row) for row in choices]

    def _budget_choices(self, logits: list[torch.Tensor], raw: torch.Tensor, space: "SearchSpace",
                        band: float) -> list[list[int]]:
        """Per target, the most likely arch whose every metric lies in [target * (1 - band), target]."""
        from flexnas.search.budget import BudgetDecoder

        decoder = BudgetDecoder(space.cost_model(), self.option_counts)
        logp = [F.log_softmax(lg.double(), -1).cpu().numpy() for lg in logits]
        out = []
        for i in range(len(raw)):
            windows = {m: (float(raw[i, j]) * (1 - band), float(raw[i, j])) for j, m in enumerate(self.metrics)}
            out.append(decoder.decode([lp[i] for lp in logp], windows))
        return out

    def generate_with_costs(self, targets: Union[Target, Sequence[Target]], space: Optional["SearchSpace"] = None,
                            priors: Optional[Sequence[Union[Arch, str, None]]] = None,
                            decode: str = DEFAULT_DECODE, band: float = DECODE_BAND) -> list[dict[str, Any]]:
        """`generate` plus, per target, the exact costs, the asked values and the relative errors."""
        space = space or self._space
        targets = self._as_list(targets)
        archs = self.generate(targets, space, priors, decode, band)
        if not archs:
            return []
        raw = self.target_tensor(targets).numpy()
        costs = space.cost_model().costs(archs)
        rows = []
        for i, arch in enumerate(archs):
            row: dict[str, Any] = {"arch": arch, "text": space.encode(arch)}
            for m, v in costs.items():
                row[m] = float(v[i])
            for j, m in enumerate(self.metrics):
                asked = float(raw[i, j])
                row[f"target_{m}"] = asked
                row[f"error_{m}"] = (row[m] - asked) / asked
            rows.append(row)
        return rows

    # ---- training -----------------------------------------------------------------------------
    def fit(self, supernet: Optional[nn.Module], space: "SearchSpace", batches: Any,
            config: Optional[GeneratorConfig] = None, device: Union[str, torch.device] = "cpu",
            progress: bool = False, log: Optional[Callable[[int, dict[str, float]], None]] = None,
            **knobs: Any) -> dict[str, float]:
        """Train the generator through the frozen supernet; returns the last step's losses.
        `batches`: the (x, y) image stream of the cross-entropy term (`Run.fit_generator` passes the
        split `config.ce_data` names), read in consecutive `image_batch` slices.

        `config` (default `GeneratorConfig()`) with `knobs` overriding its fields (steps, lr, ...).
        Only the generator's parameters move: the supernet is put in eval mode with requires_grad off
        (its flags and mode are restored afterwards; its weights and BN statistics never change).
        With `ce_weight=0` the fit is cost-only and needs neither supernet nor batches."""
        from flexnas.train.trainer import prepare_input

        self._check_space(space)
        cfg = (config or GeneratorConfig()).replace(**knobs)
        if tuple(cfg.metrics) != self.metrics:
            cfg = cfg.replace(metrics=list(self.metrics))
        use_ce = cfg.ce_weight > 0
        if use_ce and supernet is None:
            raise ConfigError("the generator's cross-entropy term needs the trained supernet; pass one, "
                              "or ce_weight=0 for a cost-only fit")
        if use_ce and batches is None:
            raise DataError("the generator's cross-entropy term needs training batches; pass them, "
                            "or ce_weight=0 for a cost-only fit")
        device = torch.device(device)
        self.to(device)
        self.train()
        cost_model = space.cost_model()
        gen = torch.Generator().manual_seed(cfg.seed)
        opt = torch.optim.Adam(self.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr * 0.05)
        frozen = _Frozen(supernet, batch_stats=cfg.ce_bn == "batch") if use_ce else None
        stream = _chunks(_cycle(batches), cfg.image_batch) if use_ce else None
        bar = _progress(cfg.steps, progress)
        residual_scale = _RunningScale()
        last: dict[str, float] = {}
        try:
            for step in range(cfg.steps):
                tau = cfg.tau_start * (cfg.tau_end / cfg.tau_start) ** (step / max(cfg.steps - 1, 1))
                raw = self._sample_targets(cfg.cost_targets, gen)
                logits = self(raw)
                drawn = self._straight_through(logits, tau, gen)
                # The noise-free argmax (what `generate` returns), straight-through, so the penalty
                # also acts on the archs finally used, not only on noisy draws.
                greedy = self._straight_through(logits, tau, None)
                cost = self._cost_loss(cost_model, drawn, raw, cfg) + self._cost_loss(cost_model, greedy, raw, cfg)
                loss = cfg.cost_weight * cost
                ce = None
                if use_ce and step % cfg.ce_every == 0:
                    x, y = next(stream)  # type: ignore[arg-type]
                    x = prepare_input(x, device, channels_last=True)
                    y = y.to(device)
                    if cfg.ce_estimator == "reinforce":
                        policy, ce = self._policy_loss(supernet, space, cost_model, x, y, cfg, gen, residual_scale)
                        loss = loss + cfg.ce_weight * policy
                    else:
                        # The images are split among the first `ce_archs` drawn archs (their targets are
                        # uniform over the range): one arch per step is SGNAS's one constraint per batch;
                        # more spread the same images over more targets.
                        parts = zip(torch.tensor_split(x, cfg.ce_archs), torch.tensor_split(y, cfg.ce_archs))
                        ce = sum(F.cross_entropy(supernet(xa, [p[a] for p in drawn]), ya,  # type: ignore[misc]
                                                 reduction="sum") for a, (xa, ya) in enumerate(parts)) / len(y)
                        loss = loss + cfg.ce_weight * ce
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                last = {"loss": float(loss.detach()), "cost": float(cost.detach()), "tau": tau}
                if ce is not None:
                    last["ce"] = float(ce.detach())
                if log is not None:
                    log(step, last)
                bar(step, last)
        finally:
            bar(None, last)
            if frozen is not None:
                frozen.restore()
            self.eval()
        return last

    def _policy_loss(self, supernet: nn.Module, space: "SearchSpace", cost_model: Any, x: torch.Tensor,
                     y: torch.Tensor, cfg: GeneratorConfig, gen: torch.Generator,
                     scale: "_RunningScale") -> tuple[torch.Tensor, torch.Tensor]:
        """REINFORCE on single paths: draw `policy_archs` archs for one target from the generator's
        softmax, score each on the same images (no gradient through the supernet), and reward the
        ones whose cross-entropy is lower than a least-squares fit of CE on their relative costs
        predicts. The cost fit removes the "bigger is better" part of the reward, which the cost
        penalty handles, and leaves what the generator should learn from the supernet: where to
        spend a budget. Returns (policy loss, mean CE of the drawn archs)."""
        raw = self._sample_targets(1, gen)
        log_probs = [F.log_softmax(lg[0], -1) for lg in self(raw)]
        drawn = torch.stack([torch.multinomial(lp.detach().exp().cpu().float(), cfg.policy_archs, replacement=True,
                                               generator=gen) for lp in log_probs], 1)
        archs = [space.repair(row) for row in drawn.tolist()]
        with torch.no_grad():
            ces = torch.stack([F.cross_entropy(supernet(x, arch), y) for arch in archs]).double().cpu()
        costs = cost_model.costs(archs)
        rel = torch.tensor(np.stack([costs[m] / float(raw[0, j]) for j, m in enumerate(self.metrics)], 1))
        residual = ces - _ridge_fit(rel, ces)
        advantage = -residual / scale.update(float(residual.std()))
        picked = torch.stack([lp[drawn[:, p].to(lp.device)] for p, lp in enumerate(log_probs)], 1).sum(1)
        return -(advantage.to(picked) * picked).mean(), ces.mean().float()

    def _sample_targets(self, n: int, gen: torch.Generator) -> torch.Tensor:
        u = torch.rand(n, len(self.metrics), generator=gen, dtype=torch.float64)
        lo = torch.tensor([self.ranges[m][0] for m in self.metrics], dtype=torch.float64)
        hi = torch.tensor([self.ranges[m][1] for m in self.metrics], dtype=torch.float64)
        return lo + u * (hi - lo)

    def _straight_through(self, logits: list[torch.Tensor], tau: float,
                          gen: Optional[torch.Generator]) -> list[torch.Tensor]:
        """Hard one-hot forward, softmax(logits [+ Gumbel noise]) / tau gradient, per choice point.
        `gen=None` gives the noise-free argmax."""
        out: list[Optional[torch.Tensor]] = [None] * len(logits)
        for n, idx in self._groups:
            lg = torch.stack([logits[i] for i in idx], 1)  # (N, points, n)
            if gen is not None:
                u = torch.rand(lg.shape, generator=gen, dtype=lg.dtype).to(lg.device)
                lg = lg - torch.log((-torch.log(u.clamp_min(1e-10))).clamp_min(1e-10))
            soft = F.softmax(lg / tau, -1)
            hard = F.one_hot(soft.argmax(-1), n).to(soft)
            st = hard + soft - soft.detach()
            for k, i in enumerate(idx):
                out[i] = st[:, k]
        return out  # type: ignore[return-value]

    def _cost_loss(self, cost_model: Any, probs: list[torch.Tensor], raw: torch.Tensor,
                   cfg: GeneratorConfig) -> torch.Tensor:
        """Asymmetric squared penalty on the relative cost error outside a tolerance band: going over a
        target (a broken budget) costs `over_weight` times more than staying under it."""
        expected = cost_model.expected(probs)
        total = probs[0].new_zeros(())
        for j, m in enumerate(self.metrics):
            target = raw[:, j].to(probs[0])
            rel = (expected[m] - target) / target
            over = F.relu(rel - cfg.tolerance)
            under = F.relu(-rel - cfg.tolerance)
            total = total + (cfg.over_weight * over ** 2 + under ** 2).mean()
        return total

    # ---- persistence --------------------------------------------------------------------------
    def save(self, path: Union[str, Path], info: Optional[Mapping[str, Any]] = None) -> Path:
        """Atomically write the generator (weights + what is needed to rebuild it) to `path`; `info`
        is free-form JSON-able metadata (e.g. the fit config and final losses)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"format": FORMAT, "version": VERSION, "space": self.space_name,
                 "option_counts": list(self.option_counts), "metrics": list(self.metrics),
                 "hidden": self.hidden, "frequencies": self.frequencies, "seed": self.seed,
                 "prior_pool": self.prior_pool,
                 "ranges": {m: list(r) for m, r in self.ranges.items()}, "info": dict(info or {}),
                 "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()}}
        return atomic_torch_save(state, path)

    @classmethod
    def load(cls, path: Union[str, Path], space: "SearchSpace",
             device: Union[str, torch.device] = "cpu") -> "Generator":
        """Rebuild a saved generator for `space`; a missing or corrupt file, or one fitted for another
        space (name, choice points or cost range), raises CheckpointError."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"no generator at {path}; fit one with `flexnas generate-fit RUN`")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"{path} is not a readable generator file: {first}") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a flexnas generator file")
        if state.get("version") != VERSION:
            raise CheckpointError(f"{path} has generator format version {state.get('version')}, "
                                  f"this flexnas reads {VERSION}; refit it")
        try:
            counts = tuple(len(p.options) for p in space.choices)
            if state["space"] != space.name or tuple(state["option_counts"]) != counts:
                raise CheckpointError(f"generator {path} was fitted for space '{state['space']}' with "
                                      f"{len(state['option_counts'])} choice points, not '{space.name}' with "
                                      f"{len(counts)}; refit it with `flexnas generate-fit`")
            gen = cls(space, metrics=tuple(state["metrics"]), hidden=int(state["hidden"]),
                      frequencies=int(state["frequencies"]), seed=int(state.get("seed", 0)),
                      prior_pool=int(state.get("prior_pool", 0)))
            for m, r in state["ranges"].items():
                if not np.allclose(gen.ranges[m], r, rtol=1e-9):
                    raise CheckpointError(f"generator {path} was fitted for a {space.name} space whose {m} "
                                          f"range was {_format_range(m, *r)}, this one spans "
                                          f"{_format_range(m, *gen.ranges[m])} (another width, input size or "
                                          f"class count); refit it")
            gen.load_state_dict(state["state_dict"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"generator {path} is damaged or does not fit: {first}") from None
        gen.info = dict(state.get("info") or {})
        return gen.to(device).eval()


class _Frozen:
    """Freeze a module for the generator fit (eval mode, no parameter grads) and restore it after.
    `batch_stats`: BatchNorm layers normalise with each batch's statistics instead (train mode), as a
    recalibrated path would; their running buffers are restored bit-exactly afterwards."""

    def __init__(self, module: nn.Module, batch_stats: bool = False) -> None:
        self.module = module
        self.modes = {m: m.training for m in module.modules()}
        self.flags = [p.requires_grad for p in module.parameters()]
        module.eval()
        module.requires_grad_(False)
        self.buffers = {}
        if batch_stats:
            for m in module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
            self.buffers = {name: b.detach().clone() for name, b in module.named_buffers()}

    def restore(self) -> None:
        for m, mode in self.modes.items():
            m.training = mode
        for p, flag in zip(self.module.parameters(), self.flags):
            p.requires_grad_(flag)
        with torch.no_grad():
            for name, b in self.module.named_buffers():
                if name in self.buffers:
                    b.copy_(self.buffers[name])


def _ridge_fit(features: torch.Tensor, values: torch.Tensor, ridge: float = 1e-4) -> torch.Tensor:
    """Least-squares fit of `values` on an intercept plus centred `features` (a small ridge on the
    slopes keeps draws of nearly equal cost from producing wild slopes); returns the fitted values."""
    centred = features - features.mean(0)
    gram = centred.T @ centred + ridge * len(values) * torch.eye(centred.shape[1], dtype=centred.dtype)
    slopes = torch.linalg.solve(gram, centred.T @ (values - values.mean()))
    return values.mean() + centred @ slopes


class _RunningScale:
    """Exponential average of the reward residuals' spread: advantages are in units of the typical
    residual, so the policy term's size does not depend on how noisy the cross-entropy is."""

    def __init__(self, momentum: float = 0.9) -> None:
        self.momentum, self.value = momentum, None

    def update(self, spread: float) -> float:
        spread = spread if math.isfinite(spread) else 0.0
        self.value = spread if self.value is None else self.momentum * self.value + (1 - self.momentum) * spread
        return max(self.value, 1e-8)


def _cycle(batches: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (x, y) stream over a Batches (new epoch each pass) or any re-iterable of batches."""
    epoch = 0
    while True:
        stream = batches.epoch(epoch) if hasattr(batches, "epoch") else iter(batches)
        empty = True
        for item in stream:
            empty = False
            yield item[0], item[1]
        if empty:
            raise DataError("the generator's training batches are empty")
        epoch += 1


def _chunks(stream: Iterator[tuple[torch.Tensor, torch.Tensor]],
            size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive `size`-image pieces of an endless batch stream, so that every image takes its turn:
    taking the first `size` of each batch would use the same few images of a fixed-order stream."""
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    have = 0
    for x, y in stream:
        xs.append(x)
        ys.append(y)
        have += len(y)
        while have >= size:
            x_all, y_all = torch.cat(xs), torch.cat(ys)
            yield x_all[:size], y_all[:size]
            xs, ys, have = [x_all[size:]], [y_all[size:]], have - size


def _progress(total: int, enabled: bool) -> Callable[[Optional[int], dict[str, float]], None]:
    if not enabled:
        return lambda step, info: None
    from rich.progress import Progress

    prog = Progress(transient=True)
    prog.start()
    task = prog.add_task("generator", total=total)

    def update(step: Optional[int], info: dict[str, float]) -> None:
        if step is None:
            prog.stop()
            return
        ce = f"ce {info['ce']:.3f} " if "ce" in info else ""
        prog.update(task, completed=step + 1, description=f"generator {ce}cost {info.get('cost', 0):.4f}")

    return update
