"""Measured latency lookup tables: `latency_ms` per (layer, choice), keyed by a device fingerprint.

`profile(space, ...)` times every distinct module a layer can be (the same modules, input shapes and
per-layer decomposition `CostModel.measure` counts MACs on) plus the stem and the head, each alone
with warm-up and repeated timing (median; CUDA synchronised). The table is saved as JSON keyed by the
fingerprint of the device it was measured on. `attach_latency(space, table)` turns it into a
`latency_ms` metric of the space's `CostModel`, beside `macs` and `params`, so every searcher and the
generator accept `latency_ms<=...` targets. Latency is additive by construction here: a network's
predicted latency is the stem + head + the sum of its layers' entries (what the table gets wrong
by that assumption is measured by `benchmarks/latency_validation.py`, see docs/latency.md).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np
import torch
from torch import nn

from flexnas.errors import ArchError, ConfigError, SpaceError, did_you_mean
from flexnas.io import atomic_json

if TYPE_CHECKING:
    from flexnas.cost.model import CostModel
    from flexnas.spaces.base import LayerSpec, SearchSpace

__all__ = ["LatencyTable", "attach_latency", "device_fingerprint", "describe_fingerprint", "fingerprint_id",
           "measure_latency", "profile", "time_module"]

TABLE_FORMAT = "flexnas-latency/1"
CLOCKS = ("wall", "cpu")
# median: the typical call on a quiet device. min: the least-disturbed call, a steadier estimate of
# the quiet-device latency on a shared or busy CPU (what benchmarks/latency_validation.py uses here).
STATISTICS = {"median": statistics.median, "min": min}
MAX_DIRECT = 512  # distinct modules per layer timed one by one
_SUPPORTED = "latency tables support per-layer spaces such as proxyless, mobilenetv2, fbnet, spos and sgnas"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Fields that say which machine and software measured a table. The others (threads, batch size,
# dtype) are measurement settings: part of the key, but reproducible on any machine.
_MACHINE_FIELDS = ("device", "cpu", "gpu", "torch", "cuda")

PathOrTable = Union[str, "os.PathLike[str]", "LatencyTable"]


# ---- device fingerprint -------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def _resolve(device: Union[str, torch.device]) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device '{device}' is not a torch device; use cpu or cuda (cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"latency tables are measured on cpu or cuda, not '{dev.type}'")
    return dev


def device_fingerprint(device: Union[str, torch.device] = "cpu", threads: Optional[int] = None,
                       batch_size: int = 1, dtype: str = "float32", clock: str = "wall") -> dict[str, Any]:
    """What a latency measurement depends on: CPU model and threads, or GPU name (and CUDA version);
    torch version, dtype, batch size and the clock. `threads=None`: torch's current thread count."""
    dev = _resolve(device)
    fp: dict[str, Any] = {"device": dev.type}
    if dev.type == "cpu":
        fp["cpu"] = _cpu_model()
        fp["threads"] = int(threads) if threads is not None else torch.get_num_threads()
    else:
        available = torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count()
        fp["gpu"] = torch.cuda.get_device_name(dev.index or 0) if available else "none (CUDA unavailable)"
        fp["cuda"] = torch.version.cuda
    fp.update(torch=torch.__version__, dtype=dtype, batch_size=int(batch_size), clock=clock)
    return fp


def fingerprint_id(fp: dict[str, Any]) -> str:
    """A short stable id of a fingerprint (in default file names and model cards)."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:12]


def describe_fingerprint(fp: dict[str, Any]) -> str:
    where = (f"cpu '{fp.get('cpu')}' x{fp.get('threads')} thread(s)" if fp.get("device") == "cpu"
             else f"gpu '{fp.get('gpu')}' (CUDA {fp.get('cuda')})")
    return (f"{where}, torch {fp.get('torch')}, {fp.get('dtype')}, batch {fp.get('batch_size')}, "
            f"{fp.get('clock', 'wall')} clock [{fingerprint_id(fp)}]")


# ---- timing -------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(clock: str, device: torch.device) -> Callable[[], float]:
    """`wall`: real latency. `cpu`: the calling thread's CPU time, which leaves out the time other
    processes hold the core: on a shared, oversubscribed CPU it is the latency an idle machine would
    show. Only meaningful with one thread on the CPU."""
    if clock not in CLOCKS:
        raise ConfigError(f"unknown clock '{clock}'{did_you_mean(clock, CLOCKS)}; use one of {', '.join(CLOCKS)}")
    if clock == "cpu":
        if device.type != "cpu" or torch.get_num_threads() != 1:
            raise ConfigError("the cpu clock times one CPU thread: use it with --device cpu --threads 1")
        return time.thread_time
    return time.perf_counter


def time_module(module: nn.Module, x: torch.Tensor, warmup: int = 10, repeats: int = 50,
                clock: str = "wall", flush: Optional[torch.Tensor] = None, statistic: str = "median") -> float:
    """Median (or `statistic`: min) time of `module(x)` in milliseconds, after `warmup` untimed calls
    (allocator, oneDNN/cuDNN algorithm selection). Each call is timed alone and CUDA-synchronised, so
    the median ignores the occasional call another process on the machine slowed down."""
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"timing needs repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    now = _clock(clock, x.device)
    was_training = module.training
    module.eval()
    times = []
    try:
        with torch.no_grad():
            for _ in range(warmup):
                module(x)
            _sync(x.device)
            for _ in range(repeats):
                if flush is not None:  # untimed: evict the module's weights, as earlier layers do in a network
                    flush.add_(1.0)
                    _sync(x.device)
                start = now()
                module(x)
                _sync(x.device)
                times.append(now() - start)
    finally:
        module.train(was_training)
    return _statistic(statistic)(times) * 1e3


def _statistic(name: str) -> Callable[[list[float]], float]:
    if name not in STATISTICS:
        raise ConfigError(f"unknown timing statistic '{name}'{did_you_mean(name, STATISTICS)}; "
                          f"use one of {', '.join(STATISTICS)}")
    return STATISTICS[name]


def measure_latency(model: nn.Module, input_size: int, device: Union[str, torch.device] = "cpu",
                    batch_size: int = 1, dtype: str = "float32", warmup: int = 10, repeats: int = 50,
                    channels: int = 3, clock: str = "wall", statistic: str = "median") -> float:
    """End-to-end latency (ms, median or `statistic`) of a whole network: what the table predicts."""
    dev, dt = _resolve(device), _dtype(dtype, _resolve(device))
    model = model.to(dev, dt)
    x = torch.randn(batch_size, channels, input_size, input_size, device=dev, dtype=dt)
    return time_module(model, x, warmup, repeats, clock, statistic=statistic)


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype '{name}'{did_you_mean(name, DTYPES)}; use one of {', '.join(DTYPES)}")
    if name != "float32" and device.type == "cpu":
        raise ConfigError(f"dtype {name} is only profiled on cuda; CPU tables are float32")
    return DTYPES[name]


# ---- the table ----------------------------------------------------------------------------------
def space_signature(space: "SearchSpace") -> dict[str, Any]:
    """Which space a table belongs to: its arguments, and a hash of every layer's shapes and
    options plus the stem and head modules (so e.g. a different head width is caught too)."""
    text = json.dumps([repr(space), [(l.c_in, l.c_out, l.stride, l.in_hw, [p.options for p in l.points])
                                     for l in space.layers], str(space._stem()), str(space._head())])
    return {"name": space.name, "input_size": space.input_size, "num_classes": space.num_classes,
            "width_mult": space.width_mult, "structure": hashlib.sha256(text.encode()).hexdigest()[:16]}


def _describe_space(s: dict[str, Any]) -> str:
    return (f"{s.get('name')} (input {s.get('input_size')}, {s.get('num_classes')} classes, "
            f"width x{s.get('width_mult')}, structure {s.get('structure')})")


@dataclass
class LatencyTable:
    """Per-layer latencies of one space on one device. `layers[i]` maps a layer token (the space's
    spelling of one config, e.g. `k3e6`) to milliseconds, one entry per distinct module cost."""

    fingerprint: dict[str, Any]
    space: dict[str, Any]
    stem_ms: float
    head_ms: float
    layers: list[dict[str, float]]
    settings: dict[str, Any] = field(default_factory=dict)
    calibration: Optional[dict[str, Any]] = None
    path: Optional[Path] = None

    @property
    def scale(self) -> float:
        """What every entry is multiplied by when the table is used: the whole-network calibration
        factor (1.0 for an uncalibrated table)."""
        return float(self.calibration["scale"]) if self.calibration else 1.0

    @property
    def id(self) -> str:
        return fingerprint_id(self.fingerprint)

    def to_dict(self) -> dict[str, Any]:
        return {"format": TABLE_FORMAT, "fingerprint": self.fingerprint, "fingerprint_id": self.id,
                "space": self.space, "settings": self.settings, "unit": "ms", "stem_ms": self.stem_ms,
                "head_ms": self.head_ms, "layers": self.layers, "calibration": self.calibration}

    def save(self, path: Union[str, "os.PathLike[str]"]) -> Path:
        """Write atomically (temp file + rename), so a killed profile never leaves half a table."""
        self.path = atomic_json(path, self.to_dict())
        return self.path

    @classmethod
    def load(cls, path: Union[str, "os.PathLike[str]"]) -> "LatencyTable":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"latency table {path} does not exist; measure one with "
                              f"`flexnas profile SPACE --device cpu --input-size N --out {path}`")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"latency table {path} is not readable JSON ({exc}); profile it again") from None
        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ConfigError(f"{path} is not a flexnas latency table (format {got!r}, expected "
                              f"{TABLE_FORMAT!r}); write one with `flexnas profile`")
        try:
            return cls(fingerprint=dict(data["fingerprint"]), space=dict(data["space"]),
                       stem_ms=float(data["stem_ms"]), head_ms=float(data["head_ms"]),
                       layers=[{str(k): float(v) for k, v in row.items()} for row in data["layers"]],
                       settings=dict(data.get("settings", {})), calibration=_calibration(data.get("calibration")),
                       path=path)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"latency table {path} is malformed ({type(exc).__name__}: {exc}); "
                              f"profile it again") from None

    def where(self) -> str:
        return str(self.path) if self.path is not None else "(in memory)"


def _calibration(value: Any) -> Optional[dict[str, Any]]:
    if value is None:
        return None
    scale = float(value["scale"])
    if not scale > 0:
        raise ValueError(f"calibration scale must be > 0, got {scale}")
    return dict(value)


# ---- profiling ----------------------------------------------------------------------------------
def _check_per_layer(space: "SearchSpace") -> None:
    """Latency tables have the cost model's per-(layer, choice) shape, so they need a space whose
    layers' input shapes do not depend on other layers' choices."""
    from flexnas.cost.model import CostModel

    own = [tuple(range(sl.start, sl.stop)) for sl in space.layer_slices]
    if list(getattr(space, "layer_points", own)) != own or not isinstance(space.cost_model(), CostModel):
        raise SpaceError(f"the {space.name} space has no per-layer latency table: a layer's input shape or "
                         f"cost depends on other layers' choices there; {_SUPPORTED}")


def _canonical_configs(space: "SearchSpace", layer: "LayerSpec") -> list[tuple[int, ...]]:
    return sorted({space._repair_layer(layer, cfg)
                   for cfg in itertools.product(*(range(n) for n in layer.option_counts))})


def profile(space: "SearchSpace", device: Union[str, torch.device] = "cpu", batch_size: int = 1,
            threads: Optional[int] = None, dtype: str = "float32", warmup: int = 10, repeats: int = 50,
            clock: str = "wall", flush_mb: float = 0.0, calibrate: int = 0, calibration_seed: int = 1,
            statistic: str = "median",
            progress: Optional[Callable[[int, int], None]] = None) -> LatencyTable:
    """Time every distinct (layer, choice) module of `space` alone at its real input shape, plus the
    stem and the head: one entry per distinct module cost key (SGNAS: per kernel multiset), in the
    cost model's per-(layer, choice) structure. A layer with more than MAX_DIRECT distinct modules uses
    the space's own decomposition into a few measured modules, where the space has one for latency.
    `flush_mb` > 0 writes a buffer that large before every timed call, so each module runs with cold
    caches as it does inside a network whose other layers evicted its weights (0: warm, the usual
    micro-benchmark). `calibrate` > 0 then times that many random whole archs (drawn with
    `calibration_seed`) end to end and stores the median ratio measured / table sum as the table's
    scale (see `calibrate_table`). `progress(done, total)` is called after each layer."""
    _check_per_layer(space)
    dev = _resolve(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("profiling on cuda asked for, but CUDA is not available here; use --device cpu")
    dt = _dtype(dtype, dev)
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    if flush_mb < 0:
        raise ConfigError(f"flush_mb must be >= 0, got {flush_mb}")
    if calibrate < 0:
        raise ConfigError(f"calibrate must be >= 0 archs, got {calibrate}")
    flush = torch.zeros(int(flush_mb * 262144), device=dev) if flush_mb > 0 else None
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    timed_modules = 0

    def timed(module: nn.Module, shape: tuple[int, ...]) -> float:
        nonlocal timed_modules
        timed_modules += 1
        module = module.to(dev, dt).eval()
        x = torch.randn(batch_size, *shape, device=dev, dtype=dt)
        return time_module(module, x, warmup, repeats, clock, flush, statistic)

    try:
        fp = device_fingerprint(dev, threads, batch_size, dtype, clock)
        _clock(clock, dev)  # reject a bad clock or statistic before timing anything
        _statistic(statistic)
        stem_ms = timed(space._stem(), (3, space.input_size, space.input_size))
        last = space.layers[-1]
        head_hw = -(-last.in_hw // last.stride)
        head_ms = timed(space._head(), (last.c_out, head_hw, head_hw))
        layers: list[dict[str, float]] = []
        for i, layer in enumerate(space.layers):
            shape = (layer.c_in, layer.in_hw, layer.in_hw)
            memo: dict[Hashable, dict[str, float]] = {}

            def measure(cfg: tuple[int, ...], layer: "LayerSpec" = layer, shape: tuple[int, ...] = shape,
                        memo: dict = memo) -> dict[str, float]:
                key = space._cost_key(layer, cfg)
                if key not in memo:
                    memo[key] = {"latency_ms": timed(space._subnet_layer(layer, cfg), shape)}
                return memo[key]

            row: dict[str, float] = {}
            firsts: dict[Hashable, tuple[int, ...]] = {}
            for cfg in _canonical_configs(space, layer):
                firsts.setdefault(space._cost_key(layer, cfg), cfg)
            # Each distinct module is timed whole: latency is not additive in sub-blocks the way MACs
            # are, and differences of noisy timings can go negative. Only layers with too many
            # distinct modules to time use the space's decomposition.
            direct = len(firsts) <= MAX_DIRECT
            for key, cfg in firsts.items():
                if direct:
                    cost = measure(cfg)
                else:
                    try:
                        cost = space._layer_cost(layer, cfg, measure)
                    except KeyError:
                        cost = {}
                if "latency_ms" not in cost:  # the space derives this layer's cost from MAC counts
                    raise SpaceError(f"the {space.name} space composes layer costs from counted modules, "
                                     f"which has no latency analogue; {_SUPPORTED}")
                row[space._encode_layer(layer, cfg)] = float(cost["latency_ms"])
            layers.append(row)
            if progress is not None:
                progress(i + 1, len(space.layers))
        settings = {"warmup": warmup, "repeats": repeats, "statistic": statistic, "clock": clock,
                    "flush_mb": flush_mb, "modules_timed": timed_modules}
        table = LatencyTable(fp, space_signature(space), stem_ms, head_ms, layers, settings)
        if calibrate:
            calibrate_table(space, table, calibrate, calibration_seed, warmup, repeats)
    finally:
        torch.set_num_threads(old_threads)
    table.settings.update(seconds=round(time.perf_counter() - started, 2), created=time.time())
    return table


def calibrate_table(space: "SearchSpace", table: LatencyTable, archs: int = 10, seed: int = 1,
                    warmup: int = 10, repeats: int = 50) -> dict[str, Any]:
    """Fit the table's scale to whole networks: time `archs` random archs end to end (the table's
    device, threads, batch, dtype and clock) and keep the median of measured / table sum. Modules
    timed alone run with their weights and input hot in cache and without the neighbours' memory
    traffic, so the raw sum under-predicts a network by a fairly constant factor (docs/latency.md);
    one factor keeps the prediction additive, exact over the table and differentiable. The raw
    entries stay in the file; `calibration` records the fit and its in-sample error."""
    if archs < 1:
        raise ConfigError(f"calibration needs at least 1 arch, got {archs}")
    fp = table.fingerprint
    threads = fp.get("threads")
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    from flexnas.cost.model import CostModel

    rng = random.Random(seed)
    raw = CostModel(space, {"latency_ms": _rows(space, table)}, {"latency_ms": table.stem_ms + table.head_ms})
    pairs = []
    try:
        for _ in range(archs):
            arch = space.sample(rng)
            measured = measure_latency(space.subnet(arch), space.input_size, fp["device"], fp["batch_size"],
                                       fp["dtype"], warmup, repeats, clock=fp.get("clock", "wall"),
                                       statistic=table.settings.get("statistic", "median"))
            pairs.append((raw.cost(arch)["latency_ms"], measured))
    finally:
        torch.set_num_threads(old_threads)
    ratios = [m / p for p, m in pairs]
    scale = statistics.median(ratios)
    table.calibration = {
        "scale": round(scale, 6), "archs": archs, "seed": seed, "statistic": "median measured / table sum",
        "ratio_range": [round(min(ratios), 4), round(max(ratios), 4)],
        "in_sample_median_abs_error_pct": {
            "raw": round(statistics.median(abs(p - m) / m * 100 for p, m in pairs), 2),
            "calibrated": round(statistics.median(abs(scale * p - m) / m * 100 for p, m in pairs), 2)}}
    return table.calibration


def default_path(space: "SearchSpace", table: LatencyTable) -> Path:
    return Path("latency") / (f"{space.name}-{space.input_size}px-x{space.width_mult:g}-"
                              f"{table.fingerprint['device']}-{table.id}.json")


# ---- into the cost model ------------------------------------------------------------------------
def _rows(space: "SearchSpace", table: LatencyTable) -> list[np.ndarray]:
    """The table in the cost model's layout: one entry per raw config of each layer, mixed radix
    with choice point 0 least significant; non-canonical configs take their repair's latency."""
    if len(table.layers) != len(space.layers):
        raise ConfigError(f"latency table {table.where()} has {len(table.layers)} layers, the {space.name} "
                          f"space has {len(space.layers)}; profile this space")
    rows = []
    for layer, entries in zip(space.layers, table.layers):
        by_key: dict[Hashable, float] = {}
        for token, ms in entries.items():
            try:
                cfg = space._decode_layer(layer, token)
            except ArchError as exc:
                raise ConfigError(f"latency table {table.where()}, layer {layer.index}: entry '{token}' "
                                  f"does not fit the {space.name} space ({exc}); profile this space") from None
            by_key[space._cost_key(layer, space._repair_layer(layer, cfg))] = ms
        row = []
        for rev in itertools.product(*(range(n) for n in reversed(layer.option_counts))):
            cfg = space._repair_layer(layer, tuple(reversed(rev)))
            key = space._cost_key(layer, cfg)
            if key not in by_key:
                raise ConfigError(f"latency table {table.where()} has no entry for layer {layer.index} "
                                  f"'{space._encode_layer(layer, cfg)}'; profile this space again")
            row.append(by_key[key])
        rows.append(np.asarray(row, dtype=np.float64))
    return rows


def check_table(space: "SearchSpace", table: LatencyTable, allow_foreign_table: bool = False) -> None:
    """Refuse a table measured for another space or (unless allowed) on another device."""
    want = space_signature(space)
    if table.space != want:
        raise ConfigError(f"latency table {table.where()} was measured for {_describe_space(table.space)}, "
                          f"not {_describe_space(want)}; profile this space with `flexnas profile "
                          f"{space.name} --input-size {space.input_size} --width-mult {space.width_mult:g}`")
    fp = table.fingerprint
    try:
        here = device_fingerprint(fp.get("device", "cpu"), fp.get("threads"), fp.get("batch_size", 1),
                                  fp.get("dtype", "float32"), fp.get("clock", "wall"))
    except ConfigError:
        here = {"device": "unknown"}
    if not allow_foreign_table and any(here.get(k) != fp.get(k) for k in _MACHINE_FIELDS):
        raise ConfigError(f"latency table {table.where()} was measured on {describe_fingerprint(fp)}, but this "
                          f"machine is {describe_fingerprint(here)}; profile this device with `flexnas "
                          f"profile`, or pass --allow-foreign-table (allow_foreign_table=True) to search "
                          f"with the other device's latencies")


def attach_latency(space: "SearchSpace", table: PathOrTable, allow_foreign_table: bool = False) -> "CostModel":
    """Add `latency_ms` (from `table`, a LatencyTable or a path) to the space's cost model and make it
    the space's cost model, so every later `space.cost_model()` (searchers, generator, constraint
    checks) sees it. Exact sum of table entries, vectorised `costs`, differentiable `expected`."""
    from flexnas.cost.model import CostModel

    if not isinstance(table, LatencyTable):
        table = LatencyTable.load(table)
    check_table(space, table, allow_foreign_table)
    _check_per_layer(space)
    base = space.cost_model()
    tables = {m: base._tables[m] for m in base.metrics if m != "latency_ms"}
    constants = {m: base.constants[m] for m in tables}
    tables["latency_ms"] = [row * table.scale for row in _rows(space, table)]
    constants["latency_ms"] = (table.stem_ms + table.head_ms) * table.scale
    model = CostModel(space, tables, constants)
    model.latency_table = table  # type: ignore[attr-defined]
    space.__dict__["_cost_model"] = model
    return model
