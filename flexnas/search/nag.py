"""NAG-style conditional architecture generation: archs given (accuracy class, params class).

NAG (Jing et al., Neurocomputing 2021) learns a generative model of architectures conditioned on
requested properties. Here the training set is a search archive (every scored arch with its supernet
accuracy and exact costs); each arch gets an accuracy class and a cost class (params by default, as
NAG; or macs) by equal-count quantile bins over that archive (`ClassBins`). Two conditional models
are interchangeable (`MODELS`):

- `categorical`: one categorical distribution per choice point and per (accuracy, cost) class pair,
  fitted by maximum likelihood (counts) with hierarchical additive smoothing: a sparse class pair
  backs off to its cost class, which backs off to uniform.
- `gan`: NAG's conditional GAN. The generator maps noise + class embeddings to per-choice-point
  logits and emits straight-through Gumbel-softmax one-hots; the discriminator sees an arch's one-hots
  plus the class embeddings; least-squares GAN loss, as NAG.

docs/nag.md has the measured in-class rates of both against random sampling and why `gan` is the
default (it landed more archs in the requested class on a real supernet archive; `categorical` fits in
milliseconds instead of ~16 s and tied on a synthetic one). `search` plugs the generator into
constrained search (`search.strategy=nag`).

    gen = NagGenerator(space, model="gan", metric="params").fit(archive)
    archs = gen.generate(accuracy_class=2, params_class=0, k=10)
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Protocol, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flexnas.arch import Arch
from flexnas.errors import ConfigError, DataError, did_you_mean
from flexnas.io import atomic_torch_save
from flexnas.search.archive import Archive
from flexnas.search.base import Evaluator, Record, SearchResult, best_per_target
from flexnas.search.constraints import Constraint, check_feasible, format_value
from flexnas.search.sampling import Sampler, Scorer, Target, meets

if TYPE_CHECKING:
    from flexnas.spaces.base import SearchSpace

__all__ = ["CLASSES", "DEFAULT_MODEL", "MODELS", "CachedAccuracy", "CategoricalModel", "ClassBins", "GanModel",
           "NagGenerator", "TrainingSet", "generate_for_run", "in_class_rates", "search"]

CLASSES = 3  # NAG: 3 accuracy classes x 3 params classes
CACHE_FORMAT = "flexnas-nag-generator-v1"
MIN_PER_CLASS = 2  # records needed per class on average before bins mean anything
MAX_CLASSES = 10


# ---- classes ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassBins:
    """Equal-count bins of one metric: class i holds `splits[i-1] <= value < splits[i]` (0 = lowest).

    Split points are NAG's (`sorted[n // k * i]` for i = 1..k-1), but a value equal to a split goes to
    the upper class: accuracies tie often (a validation split of 288 images moves in steps of 1/288),
    and with ties going down the *top* accuracy class, the one a search asks for, could be empty."""

    metric: str
    splits: tuple[float, ...]

    @classmethod
    def fit(cls, metric: str, values: Sequence[float], classes: int) -> "ClassBins":
        v = np.sort(np.asarray(values, dtype=np.float64))
        if len(v) < classes:
            raise DataError(f"{classes} {metric} classes need at least {classes} archs, got {len(v)}")
        return cls(metric, tuple(float(v[len(v) // classes * i]) for i in range(1, classes)))

    @property
    def classes(self) -> int:
        return len(self.splits) + 1

    def classify(self, values: Union[float, Sequence[float], np.ndarray]) -> np.ndarray:
        return np.searchsorted(np.asarray(self.splits), np.asarray(values, dtype=np.float64), side="right")

    def bounds(self, c: int) -> tuple[Optional[float], Optional[float]]:
        """(low inclusive, high exclusive) of class `c`; None where the class is open-ended."""
        return (self.splits[c - 1] if c > 0 else None, self.splits[c] if c < len(self.splits) else None)

    def overlaps(self, c: int, target: Target) -> bool:
        """Whether some value of class `c` can meet `target` (always, for a target on another metric)."""
        if target is None or target.metric != self.metric:
            return True
        lo, hi = self.bounds(c)
        return (target.high is None or lo is None or lo <= target.high) and \
               (target.low is None or hi is None or hi > target.low)

    def describe(self, c: int) -> str:
        lo, hi = self.bounds(c)

        def fmt(v: float) -> str:
            return f"{100 * v:.2f}%" if self.metric == "accuracy" else format_value(self.metric, v)

        if lo is None and hi is None:
            return f"any {self.metric}"
        if lo is None:
            return f"{self.metric} < {fmt(hi)}"  # type: ignore[arg-type]
        if hi is None:
            return f"{self.metric} >= {fmt(lo)}"
        return f"{fmt(lo)} <= {self.metric} < {fmt(hi)}"


def check_class(value: Any, classes: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < classes:
        raise ConfigError(f"{what} class {value!r} does not exist: classes are 0..{classes - 1} "
                          f"(0 = lowest, {classes - 1} = highest)")
    return int(value)


@dataclass
class TrainingSet:
    """Archs as an int array (N, choice points) with their accuracy class and cost class."""

    choices: np.ndarray
    acc_class: np.ndarray
    cost_class: np.ndarray
    acc_bins: ClassBins
    cost_bins: ClassBins
    option_counts: np.ndarray  # options per choice point

    @classmethod
    def from_records(cls, space: "SearchSpace", records: Iterable[Record], metric: str = "params",
                     classes: int = CLASSES) -> "TrainingSet":
        records = [r for r in records if r.arch.space == space.name]
        need = MIN_PER_CLASS * classes
        if len(records) < need:
            what = "has no evaluated archs" if not records else f"has only {len(records)} evaluated archs"
            raise DataError(f"the archive {what}; {classes} classes need at least {need}: NAG learns from "
                            f"scored archs, so search first (e.g. `flexnas search RUN --strategy random`)")
        choices = np.array([r.arch.choices for r in records], dtype=np.int64)
        acc = np.array([r.accuracy for r in records], dtype=np.float64)
        # Cost classes come from the cost model (exact), not from whatever the archive stored.
        cost = space.cost_model().costs(choices)[metric]
        acc_bins = ClassBins.fit("accuracy", acc, classes)
        cost_bins = ClassBins.fit(metric, cost, classes)
        return cls(choices, acc_bins.classify(acc), cost_bins.classify(cost), acc_bins, cost_bins,
                   np.array([len(p.options) for p in space.choices], dtype=np.int64))

    def __len__(self) -> int:
        return len(self.choices)

    def count(self, acc_class: int, cost_class: int) -> int:
        return int(((self.acc_class == acc_class) & (self.cost_class == cost_class)).sum())

    @property
    def mask(self) -> np.ndarray:
        """(choice points, max options) True where the option exists (choice points are padded)."""
        return np.arange(int(self.option_counts.max()))[None, :] < self.option_counts[:, None]

    def export(self) -> dict[str, Any]:
        return {"choices": torch.as_tensor(self.choices), "acc_class": torch.as_tensor(self.acc_class),
                "cost_class": torch.as_tensor(self.cost_class), "option_counts": torch.as_tensor(self.option_counts),
                "bins": [[b.metric, list(b.splits)] for b in (self.acc_bins, self.cost_bins)]}

    @classmethod
    def restore(cls, state: Mapping[str, Any]) -> "TrainingSet":
        acc_bins, cost_bins = (ClassBins(metric, tuple(float(v) for v in splits)) for metric, splits in state["bins"])
        return cls(state["choices"].numpy(), state["acc_class"].numpy(), state["cost_class"].numpy(), acc_bins,
                   cost_bins, state["option_counts"].numpy())


# ---- conditional models -------------------------------------------------------------------------
class ConditionalModel(Protocol):
    def fit(self, data: TrainingSet, seed: int) -> None: ...

    def sample(self, acc_class: int, cost_class: int, k: int, seed: int) -> np.ndarray:
        """`k` raw choice rows (k, choice points); `space.repair` makes them archs."""

    def export(self) -> dict[str, Any]:
        """The fitted state, as tensors and plain values (`torch.save`-able with weights_only)."""

    def restore(self, state: Mapping[str, Any], data: TrainingSet) -> None:
        """Become the model `export` described (`data`: the training set it was fitted on)."""


class CategoricalModel:
    """p(choice point j = option o | accuracy class a, cost class c), independent across choice points.

    Maximum likelihood is the normalised counts; a Dirichlet prior of strength `prior` centred on the
    cost class's distribution (itself smoothed towards uniform) keeps class pairs with few archs
    sensible: e.g. (top accuracy, lowest params) is rare but its params class is well populated."""

    def __init__(self, prior: float = 1.0) -> None:
        if not isinstance(prior, (int, float)) or isinstance(prior, bool) or not prior > 0:
            raise ConfigError(f"categorical prior must be a positive number, got {prior!r}")
        self.prior = float(prior)
        self.probs: Optional[np.ndarray] = None  # (A, C, P, O)

    def fit(self, data: TrainingSet, seed: int) -> None:
        a_n, c_n = data.acc_bins.classes, data.cost_bins.classes
        mask = data.mask
        p_n, o_n = mask.shape
        counts = np.zeros((a_n, c_n, p_n, o_n))
        points = np.broadcast_to(np.arange(p_n), data.choices.shape)
        np.add.at(counts, (data.acc_class[:, None], data.cost_class[:, None], points, data.choices), 1.0)
        uniform = mask / mask.sum(-1, keepdims=True)
        by_cost = counts.sum(0)
        base = (by_cost + self.prior * uniform) / (by_cost.sum(-1, keepdims=True) + self.prior)
        self.probs = (counts + self.prior * base[None]) / (counts.sum(-1, keepdims=True) + self.prior)
        self._last = data.option_counts - 1

    def sample(self, acc_class: int, cost_class: int, k: int, seed: int) -> np.ndarray:
        assert self.probs is not None, "fit first"
        cdf = np.cumsum(self.probs[acc_class, cost_class], -1)
        u = np.random.default_rng(seed).random((k, cdf.shape[0]))
        return np.minimum((u[..., None] >= cdf[None]).sum(-1), self._last)

    def export(self) -> dict[str, Any]:
        assert self.probs is not None, "fit first"
        return {"probs": torch.as_tensor(self.probs)}

    def restore(self, state: Mapping[str, Any], data: TrainingSet) -> None:
        self.probs = state["probs"].numpy()
        self._last = data.option_counts - 1


class _ClassEmbed(nn.Module):
    def __init__(self, acc_classes: int, cost_classes: int, size: int) -> None:
        super().__init__()
        self.acc = nn.Embedding(acc_classes, size)
        self.cost = nn.Embedding(cost_classes, size)

    def forward(self, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.acc(a), self.cost(c)], -1)


class _Generator(nn.Module):
    def __init__(self, latent: int, embed: int, hidden: int, classes: tuple[int, int], mask: np.ndarray) -> None:
        super().__init__()
        self.embed = _ClassEmbed(*classes, embed)
        p_n, o_n = mask.shape
        self.net = nn.Sequential(nn.Linear(latent + 2 * embed, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, p_n * o_n))
        self.register_buffer("invalid", torch.as_tensor(~mask))

    def logits(self, z: torch.Tensor, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        out = self.net(torch.cat([z, self.embed(a, c)], -1)).view(len(z), *self.invalid.shape)
        return out.masked_fill(self.invalid, -1e9)


class _Discriminator(nn.Module):
    def __init__(self, embed: int, hidden: int, classes: tuple[int, int], width: int) -> None:
        super().__init__()
        self.embed = _ClassEmbed(*classes, embed)
        self.net = nn.Sequential(nn.Linear(width + 2 * embed, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, onehots: torch.Tensor, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([onehots.flatten(1), self.embed(a, c)], -1))


def _gumbel(shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(shape, generator=gen).clamp_(1e-10, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


class GanModel:
    """NAG's conditional GAN over per-choice-point one-hots (sizes as NAG: latent 100, class embeddings
    of 10, Adam 2e-4 with betas (0.5, 0.999), batch 64, least-squares loss).

    Deviation: a fake batch carries the class pairs of the real batch it is judged against (NAG draws
    fake labels uniformly). Quantile bins make each class uniform, but not each *pair*: high accuracy
    with few params is rare, and uniform fake pairs let the discriminator call rare pairs fake by
    their label alone."""

    def __init__(self, steps: int = 1500, batch_size: int = 64, latent: int = 100, embed: int = 10,
                 hidden: int = 128, lr: float = 2e-4, tau: float = 1.0) -> None:
        for name, v in (("steps", steps), ("batch_size", batch_size), ("latent", latent), ("embed", embed),
                        ("hidden", hidden)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"gan {name} must be a positive integer, got {v!r}")
        if not lr > 0 or not tau > 0:
            raise ConfigError(f"gan lr and tau must be positive, got lr={lr!r}, tau={tau!r}")
        self.steps, self.batch_size, self.latent, self.embed, self.hidden = steps, batch_size, latent, embed, hidden
        self.lr, self.tau = float(lr), float(tau)
        self.generator: Optional[_Generator] = None
        self.history: list[tuple[float, float]] = []  # (d_loss, g_loss) every 100 steps

    def _fake(self, n: int, a: torch.Tensor, c: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        assert self.generator is not None
        logits = self.generator.logits(torch.randn(n, self.latent, generator=gen), a, c)
        soft = F.softmax((logits + _gumbel(logits.shape, gen)) / self.tau, -1)
        hard = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
        return hard - soft.detach() + soft  # one-hot forward, Gumbel-softmax gradient

    def fit(self, data: TrainingSet, seed: int) -> None:
        classes = (data.acc_bins.classes, data.cost_bins.classes)
        mask = data.mask
        with torch.random.fork_rng(devices=[]):  # seeded weight init without touching the global stream
            torch.manual_seed(seed)
            self.generator = _Generator(self.latent, self.embed, self.hidden, classes, mask)
            disc = _Discriminator(self.embed, self.hidden, classes, mask.size)
        gen = torch.Generator().manual_seed(seed)
        real = F.one_hot(torch.as_tensor(data.choices), mask.shape[1]).float()
        acc = torch.as_tensor(data.acc_class, dtype=torch.long)
        cost = torch.as_tensor(data.cost_class, dtype=torch.long)
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=self.lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(disc.parameters(), lr=self.lr, betas=(0.5, 0.999))
        self.generator.train()
        self.history = []
        for step in range(self.steps):
            idx = torch.randint(len(real), (self.batch_size,), generator=gen)
            a, c = acc[idx], cost[idx]
            ones, zeros = torch.ones(self.batch_size, 1), torch.zeros(self.batch_size, 1)
            fake = self._fake(self.batch_size, a, c, gen)
            d_loss = 0.5 * (F.mse_loss(disc(real[idx], a, c), ones) + F.mse_loss(disc(fake.detach(), a, c), zeros))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            g_loss = F.mse_loss(disc(self._fake(self.batch_size, a, c, gen), a, c), ones)
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            if step % 100 == 0:
                self.history.append((d_loss.item(), g_loss.item()))
        self.generator.eval()

    def export(self) -> dict[str, Any]:
        assert self.generator is not None, "fit first"
        return {"generator": {k: v.detach().clone() for k, v in self.generator.state_dict().items()}}

    def restore(self, state: Mapping[str, Any], data: TrainingSet) -> None:
        self.generator = _Generator(self.latent, self.embed, self.hidden,
                                    (data.acc_bins.classes, data.cost_bins.classes), data.mask)
        self.generator.load_state_dict(state["generator"])
        self.generator.eval()

    @torch.no_grad()
    def sample(self, acc_class: int, cost_class: int, k: int, seed: int) -> np.ndarray:
        assert self.generator is not None, "fit first"
        gen = torch.Generator().manual_seed(seed)
        a = torch.full((k,), acc_class, dtype=torch.long)
        c = torch.full((k,), cost_class, dtype=torch.long)
        logits = self.generator.logits(torch.randn(k, self.latent, generator=gen), a, c)
        return (logits + _gumbel(logits.shape, gen)).argmax(-1).numpy()


MODELS: dict[str, type] = {"categorical": CategoricalModel, "gan": GanModel}
DEFAULT_MODEL = "gan"  # measured in docs/nag.md


# ---- the generator ------------------------------------------------------------------------------
class NagGenerator:
    """Fit on scored archs once, then `generate(accuracy_class, params_class, k)`.

    `metric` is what the second class bins (`params`, as NAG, or `macs`); `model_args` go to the model
    (e.g. `steps=500` for `gan`, `prior=2.0` for `categorical`)."""

    def __init__(self, space: "SearchSpace", model: str = DEFAULT_MODEL, metric: str = "params",
                 classes: int = CLASSES, **model_args: Any) -> None:
        if model not in MODELS:
            raise ConfigError(f"unknown NAG model '{model}'{did_you_mean(str(model), MODELS)}; "
                              f"choose one of {', '.join(MODELS)}")
        metrics = space.cost_model().metrics
        if metric not in metrics:
            raise ConfigError(f"NAG cost metric '{metric}' is not one of the cost model's "
                              f"{', '.join(metrics)}{did_you_mean(str(metric), metrics)}")
        if isinstance(classes, bool) or not isinstance(classes, int) or not 2 <= classes <= MAX_CLASSES:
            raise ConfigError(f"NAG classes must be an integer in 2..{MAX_CLASSES}, got {classes!r}")
        try:
            self.model: ConditionalModel = MODELS[model](**model_args)
        except TypeError as exc:
            raise ConfigError(f"NAG model '{model}': {exc}") from None
        self.space = space
        self.model_name = model
        self.model_args = dict(model_args)
        self.metric = metric
        self.classes = classes
        self.data: Optional[TrainingSet] = None

    def fit(self, records: Union[Archive, Iterable[Record]], seed: int = 0) -> "NagGenerator":
        if isinstance(records, Archive):
            records = records.records()
        self.data = TrainingSet.from_records(self.space, records, self.metric, self.classes)
        self.model.fit(self.data, seed)
        return self

    def save(self, path: Union[str, Path], key: str) -> Path:
        """Write the fitted generator to `path`, labelled with `key` (what it was fitted on and how), so
        `load` can tell whether it still answers the same question."""
        state = {"format": CACHE_FORMAT, "key": key, "space": self.space.name, "model": self.model_name,
                 "model_args": self.model_args, "metric": self.metric, "classes": self.classes,
                 "data": self.fitted.export(),
                 "state": self.model.export()}
        return atomic_torch_save(state, path)

    @classmethod
    def load(cls, path: Union[str, Path], space: "SearchSpace", key: str) -> Optional["NagGenerator"]:
        """The generator `save` wrote with this `key`, or None (missing, fitted on something else, or
        unreadable): a cache, so a bad file means a refit, not a failure."""
        path = Path(path)
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or state.get("format") != CACHE_FORMAT or state.get("key") != key:
                return None
            gen = cls(space, state["model"], state["metric"], int(state["classes"]), **state["model_args"])
            gen.data = TrainingSet.restore(state["data"])
            gen.model.restore(state["state"], gen.data)
        except Exception as exc:  # noqa: BLE001 - truncated or foreign file: refit rather than fail
            warnings.warn(f"ignoring unreadable NAG generator {path} ({exc}); fitting again", stacklevel=2)
            return None
        return gen

    @property
    def fitted(self) -> TrainingSet:
        if self.data is None:
            raise ConfigError("the NAG generator is not fitted: call fit(archive) first")
        return self.data

    def check(self, accuracy_class: Any, params_class: Any) -> tuple[int, int]:
        return (check_class(accuracy_class, self.classes, "accuracy"),
                check_class(params_class, self.classes, self.metric))

    def raw(self, accuracy_class: int, params_class: int, k: int, seed: int = 0) -> np.ndarray:
        """`k` raw choice rows straight from the model (before repair; their costs are the archs')."""
        self.fitted
        a, c = self.check(accuracy_class, params_class)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k (archs to generate) must be a positive integer, got {k!r}")
        return self.model.sample(a, c, k, seed)

    def generate(self, accuracy_class: int, params_class: int, k: int, seed: int = 0,
                 distinct: bool = False) -> list[Arch]:
        """`k` valid archs of the space drawn for the class pair. With `distinct`, repeated draws are
        replaced by fresh ones (up to 20 rounds), so fewer than `k` come back only from a model that
        has collapsed onto a few archs."""
        rows = self.raw(accuracy_class, params_class, k, seed)
        if not distinct:
            return [self.space.repair(r.tolist()) for r in rows]
        out: dict[Arch, None] = {}
        for round_ in range(20):
            if round_:
                rows = self.raw(accuracy_class, params_class, 2 * k, seed + 7919 * round_)
            for r in rows:
                out.setdefault(self.space.repair(r.tolist()), None)
                if len(out) == k:
                    return list(out)
        return list(out)


# ---- evaluation: how often does a generated arch land in the requested class? -------------------
class CachedAccuracy:
    """Accuracy of an arch: from the archive when it holds the arch, else from the evaluator, cached
    in memory (pass one instance to several `in_class_rates` calls to share evaluations). Nothing is
    written to the archive, so evaluating a generator never changes what the next fit learns from."""

    def __init__(self, evaluator: Evaluator, archive: Optional[Archive] = None) -> None:
        self.evaluator, self.archive = evaluator, archive
        self.cache: dict[Arch, float] = {}
        self.evaluations = 0

    def __call__(self, arch: Arch) -> float:
        if arch not in self.cache:
            stored = self.archive.get(arch) if self.archive is not None else None
            if stored is None:
                stored = self.evaluator.evaluate(arch)
                self.evaluations += 1
            self.cache[arch] = float(stored["accuracy"])
        return self.cache[arch]

    def evaluate(self, arch: Arch) -> dict[str, float]:
        return {"accuracy": self(arch)}


def _rates(space: "SearchSpace", archs: Sequence[Arch], data: TrainingSet, a: int, c: int,
           accuracy: Optional[CachedAccuracy]) -> dict[str, Any]:
    if not archs:
        return {"n": 0, "distinct": 0, "cost_hit": 0.0, "acc_hit": None, "both_hit": None}
    cost_ok = data.cost_bins.classify(space.cost_model().costs(list(archs))[data.cost_bins.metric]) == c
    out: dict[str, Any] = {"n": len(archs), "distinct": len(set(archs)), "cost_hit": float(cost_ok.mean()),
                           "acc_hit": None, "both_hit": None}
    if accuracy is not None:
        acc_ok = data.acc_bins.classify([accuracy(x) for x in archs]) == a
        out["acc_hit"] = float(acc_ok.mean())
        out["both_hit"] = float((acc_ok & cost_ok).mean())
    return out


def _describe(space: "SearchSpace", arch: Arch, metric: str, accuracy: Optional[CachedAccuracy]) -> dict[str, Any]:
    return {"arch": space.encode(arch), metric: space.cost_model().cost(arch)[metric],
            "accuracy": accuracy(arch) if accuracy is not None else None}


def in_class_rates(gen: NagGenerator, k: int, evaluator: Optional[Evaluator] = None,
                   pairs: Optional[Sequence[tuple[int, int]]] = None, seed: int = 0,
                   archive: Optional[Archive] = None) -> dict[str, Any]:
    """For each requested (accuracy class, cost class): the share of `k` generated (distinct) archs
    whose cost class is the requested one (exact, from the cost model), and with an `evaluator`, whose
    accuracy class is and whose both are; against `k` archs drawn uniformly from the space. The
    `evaluations` entry counts evaluator calls (archs the archive held are answered from it).

    Classes are the generator's bins (from its training archive), so random draws from the whole space
    land in them unevenly: that unevenness is exactly the baseline a generator has to beat."""
    data = gen.fitted
    space = gen.space
    if pairs is None:
        pairs = [(a, c) for a in range(gen.classes) for c in range(gen.classes)]
    pairs = [gen.check(a, c) for a, c in pairs]
    accuracy: Optional[CachedAccuracy] = None
    if evaluator is not None:
        accuracy = evaluator if isinstance(evaluator, CachedAccuracy) else CachedAccuracy(evaluator, archive)
    rng = random.Random(seed)
    uniform = [space.sample(rng) for _ in range(k)]
    rows = []
    for i, (a, c) in enumerate(pairs):
        archs = gen.generate(a, c, k, seed=seed + 1000 * (i + 1), distinct=True)
        rows.append({"acc_class": a, "cost_class": c, "train_count": data.count(a, c),
                     "acc_range": data.acc_bins.describe(a), "cost_range": data.cost_bins.describe(c),
                     "model": _rates(space, archs, data, a, c, accuracy),
                     "random": _rates(space, uniform, data, a, c, accuracy),
                     "archs": [_describe(space, x, gen.metric, accuracy) for x in archs]})

    def mean(side: str, key: str) -> Optional[float]:
        vals = [r[side][key] for r in rows if r[side][key] is not None]
        return float(np.mean(vals)) if vals else None

    keys = ("cost_hit", "acc_hit", "both_hit")
    return {"model": gen.model_name, "metric": gen.metric, "classes": gen.classes, "k": k, "seed": seed,
            "train_size": len(data), "pairs": rows,
            "mean": {side: {key: mean(side, key) for key in keys} for side in ("model", "random")},
            "evaluations": accuracy.evaluations if accuracy is not None else 0}


def generate_for_run(run_dir: Union[str, Path], accuracy_class: int, params_class: int, k: int = 10,
                     model: str = DEFAULT_MODEL, metric: str = "params", classes: int = CLASSES, seed: int = 0,
                     evaluate: bool = True) -> dict[str, Any]:
    """`flexnas nag RUN`: fit on the run's archive, generate `k` archs for the class pair and report
    their in-class share against `k` random archs (accuracy from the run's supernet evaluator unless
    `evaluate` is False). Returns `in_class_rates`' dict with `run` and `bins` added."""
    from flexnas.pipeline import Run

    run = Run.open(run_dir, progress=False)
    path = run.dir / "archive.sqlite"
    if not path.is_file():
        raise DataError(f"{run.dir} has no archive.sqlite: NAG learns from scored archs; search first, "
                        f"e.g. `flexnas search {run.dir} --target 'macs<=...'`")
    # The scorer check: accuracies from another checkpoint or evaluator would mislabel the classes.
    scorer = run.scorer_id()
    with Archive(path, run.space, scorer=scorer) as archive:
        # The fit is kept in the run folder and reused while the archive, scorer and settings are unchanged.
        unfitted = NagGenerator(run.space, model, metric, classes)  # validates the names used below
        records = archive.records()
        key = hashlib.sha1(json.dumps([scorer, model, metric, classes, seed] +
                                      [[r.text, r.accuracy] for r in records]).encode()).hexdigest()
        cache = run.dir / "nag" / f"{model}-{metric}-{classes}.pt"
        gen = NagGenerator.load(cache, run.space, key)
        fitted_now = gen is None
        if gen is None:
            gen = unfitted.fit(records, seed=seed)
            gen.save(cache, key)
        pair = gen.check(accuracy_class, params_class)  # before building the evaluator
        evaluator = run.evaluator() if evaluate else None
        out = in_class_rates(gen, k, evaluator, pairs=[pair], seed=seed, archive=archive)
    data = gen.fitted
    out["run"] = str(run.dir)
    out["generator_file"] = str(cache)
    out["fitted_now"] = fitted_now
    out["bins"] = {"accuracy": [data.acc_bins.describe(i) for i in range(classes)],
                   metric: [data.cost_bins.describe(i) for i in range(classes)]}
    return out


# ---- search -------------------------------------------------------------------------------------
PROPOSE_ROUNDS = 5


def _propose(gen: NagGenerator, target: Target, n: int, exclude: set[Arch], seed: int) -> list[Arch]:
    """Up to `n` new archs meeting `target`, generated for the top accuracy class and each cost class
    the target can reach, the costliest class first (accuracy grows with cost)."""
    data = gen.fitted
    cost_model = gen.space.cost_model()
    top = gen.classes - 1
    out: list[Arch] = []
    taken: set[Arch] = set()
    for c in reversed(range(gen.classes)):
        if not data.cost_bins.overlaps(c, target):
            continue
        for r in range(PROPOSE_ROUNDS):
            rows = gen.raw(top, c, 4 * n, seed + 104729 * c + r)
            ok = np.ones(len(rows), dtype=bool) if target is None else target.mask(cost_model.costs(rows))
            for row in rows[ok]:
                arch = gen.space.repair(row.tolist())
                if arch not in exclude and arch not in taken:
                    out.append(arch)
                    taken.add(arch)
                    if len(out) == n:
                        return out
    return out


def search(space: "SearchSpace", evaluator: Evaluator, constraints: Sequence[Constraint], budget: int,
           rng: random.Random, archive: Optional[Archive] = None, progress: bool = False,
           *, model: str = DEFAULT_MODEL, warmup: float = 0.3, round_size: int = 16, classes: int = CLASSES,
           model_args: Optional[Mapping[str, Any]] = None, tag: str = "nag",
           seed: Optional[int] = None) -> SearchResult:
    """Search by generating: warm up with `warmup * budget` archs drawn uniformly under the targets, then
    repeat: fit a NAG generator on everything this search scored (one per target metric, whose cost
    classes bin that metric), and per target score `round_size` new archs generated for the top
    accuracy class within the cost classes the target can reach (rejecting any that miss the target;
    a short round is topped up with fresh uniform draws).

    Same rules as `evolution.search`: every scored arch meets a target, nothing is scored twice, the
    archive answers what it holds, and a rerun with the same seed replays (fits see the same records,
    seeded from `rng`)."""
    if not isinstance(warmup, (int, float)) or isinstance(warmup, bool) or not 0.0 <= warmup <= 1.0:
        raise ConfigError(f"nag: warmup must be a fraction of the budget in [0, 1], got {warmup!r}")
    if isinstance(round_size, bool) or not isinstance(round_size, int) or round_size < 1:
        raise ConfigError(f"nag: round_size must be a positive integer, got {round_size!r}")
    constraints = [Constraint.parse(c) for c in constraints]
    check_feasible(constraints, space.cost_model())
    targets: list[Target] = list(constraints) or [None]
    metrics = sorted({t.metric for t in constraints} or {"params"})
    # Build (and so validate) the generators before any evaluation.
    gens = {m: NagGenerator(space, model, m, classes, **dict(model_args or {})) for m in metrics}
    sampler = Sampler(space, rng)
    warm = max(MIN_PER_CLASS * classes, math.ceil(warmup * budget))

    with Scorer(space, evaluator, archive, budget, tag, seed, progress) as scorer:

        def fresh(t: Target, n: int, also: Sequence[Arch] = ()) -> list[Arch]:
            """`n` (or fewer) new uniform archs meeting `t`; a target too tight for uniform draws is
            entered by a mutation walk from the best pooled archs or the space's extreme arch."""
            pooled = sorted((r for r in scorer.records if meets(t, r.metrics)), key=lambda r: (-r.accuracy, r.order))
            return sampler.fresh(t, n, scorer.seen | set(also), [r.arch for r in pooled[:10]], 0.1)

        def score_all(archs: Sequence[Arch]) -> int:
            done = 0
            for arch in archs:
                if scorer.remaining <= 0:
                    break
                if arch not in scorer.seen:
                    scorer.score(arch)
                    done += 1
            return done

        # Warm-up: the targets share it in turns.
        share, extra = divmod(min(warm, budget), len(targets))
        for i, t in enumerate(targets):
            score_all(fresh(t, share + (i < extra)))

        while scorer.remaining > 0:
            fitted: dict[str, Optional[NagGenerator]] = {}
            for m, gen in gens.items():
                try:
                    fitted[m] = gen.fit(scorer.records, seed=rng.getrandbits(31))
                except DataError:  # too few scored archs to bin (a tiny, exhausted space): draw uniformly
                    fitted[m] = None
            scored = 0
            for t in targets:
                if scorer.remaining <= 0:
                    break
                n = min(round_size, scorer.remaining)
                gen_t = fitted[t.metric if t is not None else metrics[0]]
                cands = _propose(gen_t, t, n, scorer.seen, rng.getrandbits(31)) if gen_t is not None else []
                if len(cands) < n:
                    cands += fresh(t, n - len(cands), cands)
                scored += score_all(cands)
            if scored == 0:
                break  # every arch the targets allow that sampling can find is scored

    return SearchResult(records=scorer.records, best=best_per_target(scorer.records, constraints),
                        constraints=constraints, evaluations=scorer.evaluations,
                        archive_hits=scorer.archive_hits)
