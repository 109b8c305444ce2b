"""The supernet training loop: one loop for every strategy, with atomic checkpoints and exact resume.

A step is: zero grads -> `strategy.step` (forwards + backwards) -> unscale, clip, optimizer step(s)
-> scheduler step -> log -> maybe checkpoint. Everything that influences the result (weights,
optimizer, scheduler, AMP scaler, strategy state, RNG states, position in the epoch and the metric
accumulators) is in `checkpoint.pt`, so a killed run resumed with `fit(resume=True)` ends with the same
weights, bit for bit on CPU, as a run that was never stopped.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

import flexnas
from flexnas.errors import CheckpointError, ConfigError, DataError, FlexnasError, did_you_mean
from flexnas.train import distributed, strategies
from flexnas.train.checkpoint import load_checkpoint, save_checkpoint
from flexnas.train.optim import build_optimizer, build_scheduler, param_groups
from flexnas.train.strategies.base import StepContext, Strategy, step_seed

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from flexnas.spaces.base import SearchSpace
    from flexnas.supernet import Supernet

__all__ = ["Batches", "TrainConfig", "Trainer", "prepare_input", "tensorboard_writer"]

CHECKPOINT_NAME = "checkpoint.pt"
HISTORY_NAME = "history.json"
DERIVED_NAME = "derived.json"


class Batches(Protocol):
    """What the trainer and evaluator read: a deterministic, resumable stream of (x, y) batches."""

    def __len__(self) -> int:
        """Batches per epoch."""
        ...

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `epoch` (same order for the same seed and epoch), skipping the first `start`."""
        ...


_OPTIMIZERS = ("sgd", "adam", "rmsprop", "rmsprop_tf")
_SCHEDULES = ("cosine", "step", "constant")
# Fields that change how often the run reports or saves, never what it computes: they may differ
# between a run and its resumption.
_COSMETIC = ("checkpoint_every_steps", "log_every_steps")


@dataclass
class TrainConfig:
    """Supernet training settings. `amp` only takes effect on CUDA; `channels_last` on every device (on
    CPU, supernet training steps ran 1.3-2.3x faster in that layout: benchmarks/memory_format.py)."""

    strategy: str = "uniform"
    strategy_args: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 4e-5
    schedule: str = "cosine"
    step_size: int = 30
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.1
    grad_clip: float = 5.0
    amp: bool = True
    channels_last: bool = True
    checkpoint_every_steps: int = 0
    log_every_steps: int = 20

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for a value that cannot train, naming the key and what is allowed."""
        if self.optimizer not in _OPTIMIZERS:
            raise ConfigError(f"train.optimizer: unknown optimizer '{self.optimizer}'"
                              f"{did_you_mean(self.optimizer, _OPTIMIZERS)}; allowed: {', '.join(_OPTIMIZERS)}")
        if self.schedule not in _SCHEDULES:
            raise ConfigError(f"train.schedule: unknown schedule '{self.schedule}'"
                              f"{did_you_mean(self.schedule, _SCHEDULES)}; allowed: {', '.join(_SCHEDULES)}")
        if not isinstance(self.strategy_args, dict):
            raise ConfigError(f"train.strategy_args must be a mapping, got {type(self.strategy_args).__name__}")
        checks = [
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("lr", self.lr > 0 and math.isfinite(self.lr), "must be a positive number"),
            ("momentum", 0 <= self.momentum < 1, "must be in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("step_size", self.step_size >= 1, "must be >= 1"),
            ("gamma", 0 < self.gamma <= 1, "must be in (0, 1]"),
            ("warmup_epochs", 0 <= self.warmup_epochs <= self.epochs, f"must be in [0, epochs={self.epochs}]"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "must be in [0, 1)"),
            ("grad_clip", self.grad_clip >= 0, "must be >= 0 (0 disables clipping)"),
            ("checkpoint_every_steps", self.checkpoint_every_steps >= 0, "must be >= 0 (0: only at epoch ends)"),
            ("log_every_steps", self.log_every_steps >= 1, "must be >= 1"),
        ]
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"train.{key} {why}, got {getattr(self, key)!r}")
        if self.optimizer == "sgd" and self.nesterov and self.momentum == 0:
            raise ConfigError("train.nesterov needs train.momentum > 0 (or set nesterov: false)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def result_fields(self) -> dict[str, Any]:
        """The fields that change what training computes (all but how often it logs and saves)."""
        return {k: v for k, v in self.to_dict().items() if k not in _COSMETIC}

    def hash(self) -> str:
        text = json.dumps(self.result_fields(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def prepare_input(x: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """Move a batch to `device`; 1-channel images (digits, MNIST) are repeated to the 3 channels every
    space's stem takes."""
    if x.dim() == 4 and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def tensorboard_writer(run_dir: Union[str, Path]) -> "SummaryWriter":
    """The run's TensorBoard writer, logging to `run_dir/tb`."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(Path(run_dir) / "tb"))


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _rng_state(device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _space_meta(space: "SearchSpace", supernet: nn.Module) -> dict[str, Any]:
    """The space's name, its constructor arguments kept as attributes (input_size, width_mult, ...),
    and a fingerprint of the supernet's tensor names and shapes, which catches every other
    difference (head width, weight sharing) that would make the weights not fit."""
    meta: dict[str, Any] = {"name": space.name}
    for key in inspect.signature(type(space).__init__).parameters:
        value = getattr(space, key, None)
        if key != "self" and isinstance(value, (bool, int, float, str)):
            meta[key] = value
    shapes = sorted((k, tuple(v.shape)) for k, v in supernet.state_dict().items())
    meta["tensors"] = hashlib.sha256(repr(shapes).encode()).hexdigest()[:16]
    return meta


def _seed_everything(seed: int, rank: int = 0) -> None:
    """Seed the global RNGs modules may use (dropout, drop-path); strategies get their own per step.
    Each rank gets its own stream, so ranks draw independent dropout masks for their samples."""
    s = step_seed(seed, -1 - rank)
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % 2**32)


class Trainer:
    """Trains a supernet with a strategy. `fit()` from scratch, or `fit(resume=True)` from
    `run_dir/checkpoint.pt`.

    `callbacks` are called as `cb(trainer)` after every step (and after that step's checkpoint), with
    `trainer.epoch`, `trainer.step_in_epoch`, `trainer.global_step` and `trainer.last_metrics` (the
    strategy's metrics of that step, floats or 0-dim tensors, plus `lr`) set.

    `epoch_end(trainer)`, if given, runs after each epoch (`trainer.epoch` already counts it) and
    before its checkpoint; the metrics it returns (e.g. validation accuracy) join that epoch's record.
    Every epoch's record is kept in `trainer.history`, in the checkpoint, and in `run_dir/history.json`
    (for report curves)."""

    def __init__(self, space: "SearchSpace", supernet: "Supernet", train_batches: Batches, cfg: TrainConfig,
                 run_dir: Union[str, Path], device: Union[str, torch.device], seed: int,
                 writer: Optional["SummaryWriter"] = None, progress: bool = True,
                 strategy: Optional[Strategy] = None,
                 callbacks: Sequence[Callable[["Trainer"], None]] = (),
                 epoch_end: Optional[Callable[["Trainer"], dict[str, float]]] = None,
                 val_batches: Optional[Batches] = None) -> None:
        self.space = space
        self.supernet = supernet
        self.batches = train_batches
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        self.seed = int(seed)
        self.writer = writer
        self.progress = progress
        self.callbacks = list(callbacks)
        self.epoch_end = epoch_end
        self.history: list[dict[str, float]] = []
        self.strategy = strategy if strategy is not None else strategies.get(cfg.strategy, **cfg.strategy_args)
        self.strategy.check_space(space)
        if self.strategy.needs_val and val_batches is None:
            raise ConfigError(f"strategy '{self.strategy.name}' trains its architecture parameters on the "
                              f"search-validation split, but the trainer got no val_batches")
        # Only strategies that train on the search-validation split read it (and checkpoint a position).
        self._val = (_ValStream(val_batches, _batch_size(train_batches))
                     if val_batches is not None and self.strategy.needs_val else None)
        self.derived: Optional[dict[str, Any]] = None
        self.rank, self.world_size = _dist_info()
        self.steps_per_epoch = len(train_batches)
        if self.steps_per_epoch < 1:
            raise DataError("the training data yields no batches: check the dataset path and batch size")
        self.total_steps = cfg.epochs * self.steps_per_epoch
        on_cuda = self.device.type == "cuda"
        self.use_amp = cfg.amp and on_cuda
        self.channels_last = cfg.channels_last
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.last_metrics: dict[str, Any] = {}
        self._final: dict[str, float] = {}
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0

    # ---- identity of the run ----------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    def meta(self) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed by this trainer."""
        return {
            "space": _space_meta(self.space, self.supernet),
            "strategy": self.strategy.name,
            "world_size": self.world_size,
            "seed": self.seed,
            "flexnas_version": flexnas.__version__,
            "config_hash": self.cfg.hash(),
            "config": self.cfg.result_fields(),
        }

    # ---- the loop ---------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict[str, float]:
        """Train to `cfg.epochs`; returns the last epoch's mean metrics plus `lr` and `global_step`."""
        cfg, device = self.cfg, self.device
        net = self.supernet.to(device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        net.train()
        self.strategy.setup(net, self.space, device)
        model: nn.Module = net
        # Several ranks: gradients are averaged by `distributed.GradSync` once per step (not DDP's
        # reducer, see flexnas/train/distributed.py); a launch whose ranks differ stops here.
        self._grad_sync = distributed.GradSync(device) if self.world_size > 1 else None
        if self._grad_sync is not None:
            distributed.check_same("training run", {**self.meta(), "steps_per_epoch": self.steps_per_epoch})
        self.optimizer = build_optimizer(param_groups(net, cfg.weight_decay), cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.use_amp)

        error: Optional[FlexnasError] = None
        try:
            if resume:
                if not self.checkpoint_path.is_file():
                    raise CheckpointError(f"nothing to resume: no checkpoint at {self.checkpoint_path}; "
                                          f"run without resume to start training")
                # Loaded on the CPU: RNG states must be CPU tensors; load_state_dict moves the rest.
                self._restore(load_checkpoint(self.checkpoint_path, self.meta(), map_location="cpu"))
            else:
                if self.checkpoint_path.exists():
                    raise CheckpointError(f"{self.run_dir} already holds a checkpoint; resume it, or choose a "
                                          f"new run folder (or delete {self.checkpoint_path}) to start over")
                _seed_everything(self.seed, self.rank)
        except FlexnasError as exc:
            error = exc
        distributed.agree(error)   # every rank raises if any rank failed (one alone would hang the rest)

        self._params = [p for p in net.parameters() if p.requires_grad]
        self._sync_params = self._params + list(self.strategy.parameters())
        if self._grad_sync is not None:
            # Like DDP: every rank starts from rank 0's weights, whatever each was initialised with.
            distributed.broadcast_(self._sync_params + list(net.buffers()))
        self._criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        bar = _ProgressBar(enabled=self.progress and self.rank == 0, total_epochs=cfg.epochs,
                           steps_per_epoch=self.steps_per_epoch)
        window = _Window()
        with bar:
            while self.epoch < cfg.epochs:
                bar.start_epoch(self.epoch, done=self.step_in_epoch)
                for x, y in self.batches.epoch(self.epoch, start=self.step_in_epoch):
                    x = prepare_input(x, device, self.channels_last)
                    y = y.to(device, non_blocking=True)
                    lr = self.scheduler.get_last_lr()[0]
                    metrics = self._step(model, net, x, y)
                    self._accumulate(metrics)
                    window.add(metrics, x.shape[0])
                    if self.global_step % cfg.log_every_steps == 0 or self.step_in_epoch == self.steps_per_epoch:
                        logged, ips = window.flush(self.world_size)
                        logged = self._mean_over_ranks(logged)
                        self._log(logged, lr, ips)
                        bar.update(self.step_in_epoch, logged.get("loss"), ips)
                    else:
                        bar.update(self.step_in_epoch, None, None)
                    self.last_metrics = {**metrics, "lr": lr}
                    if (cfg.checkpoint_every_steps and self.global_step % cfg.checkpoint_every_steps == 0
                            and self.step_in_epoch < self.steps_per_epoch):
                        self._save()
                    for cb in self.callbacks:
                        cb(self)
                self.epoch += 1
                self.step_in_epoch = 0
                final = self._epoch_summary()
                if self.epoch_end is not None:
                    final.update({k: float(v) for k, v in self.epoch_end(self).items()})
                self.history.append({"epoch": float(self.epoch), **final})
                self._sums, self._count = {}, 0
                self._save(final)
                self._write_history()
                if self.writer is not None and self.rank == 0:
                    for k, v in final.items():
                        self.writer.add_scalar(f"train_epoch/{k}", v, self.epoch)
        if self.writer is not None and self.rank == 0:
            self.writer.flush()
        self._write_derived()
        return dict(self._final)

    def _step(self, model: nn.Module, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """One optimisation step: the strategy accumulates gradients, the loop does the rest."""
        cfg, device = self.cfg, self.device
        seed = step_seed(self.seed, self.global_step)
        ctx = StepContext(model=model, supernet=net, space=self.space, criterion=self._criterion,
                          rng=random.Random(seed), seed=seed, device=device, epoch=self.epoch,
                          global_step=self.global_step, total_steps=self.total_steps,
                          backward=lambda loss: self.scaler.scale(loss).backward(),
                          step_optimizer=self._step_optimizer,
                          autocast=lambda: torch.autocast(device.type, dtype=torch.float16, enabled=self.use_amp),
                          val_source=self._next_val if self._val is not None else None)
        extra = self.strategy.optimizers()
        self.optimizer.zero_grad(set_to_none=True)
        for opt in extra:
            opt.zero_grad(set_to_none=True)
        metrics = self.strategy.step(ctx, x, y)
        if self._grad_sync is not None:
            self._grad_sync(self._sync_params)   # before unscaling: every rank then clips the same gradient
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in self._params if p.grad is not None], cfg.grad_clip)
        self.scaler.step(self.optimizer)
        for opt in extra:
            self.scaler.step(opt)
        self.scaler.update()
        self.strategy.after_step(ctx)
        self.scheduler.step()
        self.global_step += 1
        self.step_in_epoch += 1
        return metrics

    # ---- helpers ----------------------------------------------------------------------------------
    def _accumulate(self, metrics: dict[str, Any]) -> None:
        for k, v in metrics.items():
            t = torch.as_tensor(v.detach() if torch.is_tensor(v) else v, dtype=torch.float64)
            self._sums[k] = self._sums[k] + t.to(self._sums[k].device) if k in self._sums else t.clone()
        self._count += 1

    def _step_optimizer(self, opt: torch.optim.Optimizer) -> None:
        """What a strategy calls to step its own optimizer mid-step: average its gradients first."""
        if self._grad_sync is not None:
            self._grad_sync([p for group in opt.param_groups for p in group["params"]])
        self.scaler.step(opt)

    def _mean_over_ranks(self, values: dict[str, float]) -> dict[str, float]:
        """Logged metrics averaged over ranks, so every rank logs (and checks for divergence) the same."""
        if self.world_size == 1 or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        distributed.average_([t])
        return dict(zip(keys, t.tolist()))

    def _sync_ranks(self) -> None:
        """Before a checkpoint or an epoch summary: average BatchNorm running statistics (each rank
        tracked its own shard; the EMA is linear, so averaging now equals averaging every step) and
        the epoch's metric sums over ranks, then make sure the weights are still identical."""
        if self.world_size == 1:
            return
        net = self.supernet
        distributed.average_([b for b in net.buffers() if b.is_floating_point()])
        self._average_sums()
        distributed.check_in_sync(self._sync_params + list(net.buffers()))

    def _average_sums(self) -> None:
        if self.world_size == 1:
            return
        keys = sorted(self._sums)
        sums = [self._sums[k].to(self.device, torch.float64) for k in keys]
        distributed.average_(sums)
        self._sums = dict(zip(keys, sums))

    def _epoch_summary(self) -> dict[str, float]:
        self._average_sums()
        out = {k: float(v) / max(1, self._count) for k, v in self._sums.items()}
        out["lr"] = self.scheduler.get_last_lr()[0]
        out["global_step"] = float(self.global_step)
        return out

    def _log(self, logged: dict[str, float], lr: float, ips: float) -> None:
        loss = logged.get("loss")
        if loss is not None and not math.isfinite(loss):
            raise ConfigError(f"training diverged: loss is {loss} at step {self.global_step}; lower train.lr, "
                              f"add train.warmup_epochs or keep train.grad_clip > 0")
        if self.writer is None or self.rank != 0:
            return
        for k, v in logged.items():
            self.writer.add_scalar(f"train/{k}", v, self.global_step)
        self.writer.add_scalar("train/lr", lr, self.global_step)
        self.writer.add_scalar("train/images_per_sec", ips, self.global_step)

    def _save(self, final: Optional[dict[str, float]] = None) -> None:
        if final is not None:
            self._final = final
        self._sync_ranks()
        # Each rank's own RNG state (dropout streams differ per rank), so a resume continues each.
        rngs = distributed.gather_object(_rng_state(self.device))
        if self.rank == 0:
            state = {
                "meta": self.meta(),
                "supernet": self.supernet.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "strategy": self.strategy.state_dict(),
                "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch,
                "global_step": self.global_step,
                "rng": rngs[0],
                "rng_ranks": rngs,
                "sums": {k: v.cpu() for k, v in self._sums.items()},
                "count": self._count,
                "final": self._final,
                "history": self.history,
                "val_position": self._val.position() if self._val is not None else None,
            }
            save_checkpoint(self.checkpoint_path, state)
        if self.world_size > 1:
            dist.barrier()

    @property
    def derived_path(self) -> Path:
        return self.run_dir / DERIVED_NAME

    def _write_derived(self) -> None:
        """derived.json: the arch a strategy picked itself (differentiable, DSNAS), with its costs and
        the probabilities behind it; nothing for strategies that leave the choice to search."""
        arch = self.strategy.derive(self.space)
        if arch is None:
            return
        cost = self.space.cost_model().cost(arch)
        self.derived = {"strategy": self.strategy.name, "arch": self.space.encode(arch),
                        **{k: float(v) for k, v in cost.items()}, "probs": self.strategy.arch_probs()}
        if self.rank == 0:
            tmp = self.derived_path.with_name(f".{DERIVED_NAME}.tmp")
            tmp.write_text(json.dumps(self.derived, indent=1))
            tmp.replace(self.derived_path)

    def _next_val(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._val is not None
        x, y = self._val.next()
        return prepare_input(x, self.device, self.channels_last), y.to(self.device, non_blocking=True)

    def _write_history(self) -> None:
        """history.json mirrors the checkpoint's history (rewritten whole, so a resume repairs it)."""
        if self.rank != 0:
            return
        path = self.run_dir / HISTORY_NAME
        tmp = path.with_name(f".{HISTORY_NAME}.tmp")
        tmp.write_text(json.dumps(self.history, indent=1))
        tmp.replace(path)

    def _restore(self, state: dict[str, Any]) -> None:
        path = self.checkpoint_path
        try:
            self.supernet.load_state_dict(state["supernet"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            self.strategy.load_state_dict(state["strategy"])
            self.epoch = int(state["epoch"])
            self.step_in_epoch = int(state["step_in_epoch"])
            self.global_step = int(state["global_step"])
            self._sums = {k: v.to(self.device) for k, v in state["sums"].items()}
            self._count = int(state["count"])
            self._final = dict(state["final"])
            self.history = [dict(h) for h in state.get("history", [])]  # older checkpoints have none
            if self._val is not None and state.get("val_position") is not None:
                self._val.seek(*state["val_position"])
            _set_rng_state(state.get("rng_ranks", [state["rng"]])[self.rank], self.device)
        except CheckpointError:
            raise
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"checkpoint {path} does not fit this run: {first}; "
                                  f"delete it to start over") from None


def _batch_size(batches: Batches) -> Optional[int]:
    return getattr(batches, "batch_size", None)


class _ValStream:
    """An endless, resumable stream over the search-validation batches for bi-level strategies.

    Validation batches are built for evaluation (often 256 images); each is cut into chunks of the
    training batch size so an architecture step costs what a weight step does. The position is
    (batches started, images consumed in the current one), saved in the checkpoint so a resumed run
    reads the same chunks."""

    def __init__(self, batches: Batches, chunk: Optional[int]) -> None:
        if len(batches) < 1:
            raise DataError("the search-validation split yields no batches: lower data.train_portion "
                            "(e.g. 0.8) to keep images for it")
        self.batches, self.chunk = batches, chunk
        self._index, self._offset = 0, 0
        self._iter: Optional[Iterator[tuple[torch.Tensor, torch.Tensor]]] = None
        self._iter_at = -1
        self._current: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def position(self) -> list[int]:
        return [self._index, self._offset]

    def seek(self, index: int, offset: int) -> None:
        self._index, self._offset = int(index), int(offset)
        self._iter, self._current = None, None

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._current is None:
            epoch, start = divmod(self._index, len(self.batches))
            if self._iter is None or self._iter_at != self._index or start == 0:
                self._iter = iter(self.batches.epoch(epoch, start=start))
            self._current = next(self._iter)
            self._iter_at = self._index + 1
        x, y = self._current
        end = len(x) if self.chunk is None else min(len(x), self._offset + self.chunk)
        out = x[self._offset:end], y[self._offset:end]
        self._offset = end
        if end >= len(x):
            self._index, self._offset, self._current = self._index + 1, 0, None
        return out


class _Window:
    """Metric sums and image count since the last log line (tensors stay on device until then)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, Any] = {}
        self.steps = 0
        self.images = 0
        self.start = time.perf_counter()

    def add(self, metrics: dict[str, Any], images: int) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + (v.detach() if torch.is_tensor(v) else v)
        self.steps += 1
        self.images += images

    def flush(self, world_size: int) -> tuple[dict[str, float], float]:
        """(mean metrics, images per second over all ranks), then start a new window."""
        now = time.perf_counter()
        means = {k: float(v) / max(1, self.steps) for k, v in self.sums.items()}
        ips = self.images * world_size / max(now - self.start, 1e-9)
        self._reset()
        return means, ips


class _ProgressBar:
    """A rich progress bar (epoch, step, loss, images/s), or nothing when disabled."""

    def __init__(self, enabled: bool, total_epochs: int, steps_per_epoch: int) -> None:
        self.enabled, self.total_epochs, self.steps = enabled, total_epochs, steps_per_epoch
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> "_ProgressBar":
        if self.enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeRemainingColumn)

            self._progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[ips]} img/s"),
                                      TimeRemainingColumn())
            self._progress.__enter__()
            self._task = self._progress.add_task("train", total=self.steps, epoch="", loss="-", ips="-")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def start_epoch(self, epoch: int, done: int) -> None:
        if self._progress is not None:
            self._progress.reset(self._task, total=self.steps, completed=done,
                                 epoch=f"{epoch + 1}/{self.total_epochs}", loss="-", ips="-")

    def update(self, done: int, loss: Optional[float], ips: Optional[float]) -> None:
        if self._progress is None:
            return
        fields: dict[str, Any] = {"completed": done}
        if loss is not None:
            fields["loss"] = f"{loss:.4f}"
        if ips is not None:
            fields["ips"] = f"{ips:,.0f}"
        self._progress.update(self._task, **fields)
