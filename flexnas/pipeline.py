"""The end-to-end one-shot pipeline over one run folder.

    runs/<name>/config.yaml       the resolved config (every stage reads it back)
    runs/<name>/checkpoint.pt     supernet training state (atomic; `--resume` continues it)
    runs/<name>/tb/               TensorBoard scalars
    runs/<name>/archive.sqlite    every evaluated arch (a stopped search resumes from it)
    runs/<name>/chosen.json       the best arch per target
    runs/<name>/report.md, pareto.png

`flexnas run CONFIG` runs supernet -> search -> report; each stage also runs alone on a run folder.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
import yaml

from flexnas.config import apply_overrides, from_dict, load_yaml, to_dict
from flexnas.data import DataBundle, DataConfig, build_data
from flexnas.errors import CheckpointError, ConfigError
from flexnas.search import Archive, SearchConfig, SearchResult, run_search
from flexnas.search.generator import GeneratorConfig
from flexnas.spaces import SearchSpace
from flexnas.train import distributed
from flexnas.train.trainer import TrainConfig


@dataclass
class SpaceConfig:
    """Which space. `input_size` defaults to the data's image size; `options` are extra space
    arguments (e.g. `head_channels`)."""

    name: str = "proxyless"
    width_mult: float = 1.0
    input_size: Optional[int] = None
    options: dict[str, Any] = field(default_factory=dict)

    def build(self, input_size: int, num_classes: int) -> SearchSpace:
        """The space this config names, for data of `input_size` px (unless set here) and `num_classes`."""
        from flexnas import spaces

        return spaces.get(self.name, input_size=self.input_size or input_size, num_classes=num_classes,
                          width_mult=self.width_mult, **self.options)


@dataclass
class CostConfig:
    """`latency_table`: a `flexnas profile` JSON that adds `latency_ms` to the cost model (so search
    accepts latency targets); one measured on another device is refused unless `allow_foreign_table`."""

    latency_table: Optional[str] = None
    allow_foreign_table: bool = False


@dataclass
class EvalConfig:
    """The BN-recalibrating supernet evaluator: `bn_batches` training batches recalibrate each path."""

    bn_batches: int = 20
    max_val_batches: Optional[int] = None


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    threads: Optional[int] = None  # CPU threads for torch (None: torch's default)
    runs_dir: str = "runs"
    space: SpaceConfig = field(default_factory=SpaceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)


def load_run_config(path: Union[str, Path], overrides: Optional[list[str]] = None) -> RunConfig:
    return from_dict(RunConfig, apply_overrides(load_yaml(path), overrides or []))


def resolve_device(name: str) -> torch.device:
    name = distributed.rank_device(name)  # under torchrun: cuda:LOCAL_RANK
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device '{name}' is not a valid torch device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but CUDA is not available here; use device=cpu or auto")
    return device


def set_threads(threads: Optional[int]) -> None:
    """Apply a run's `threads` setting (None keeps torch's default)."""
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


class Run:
    """One run folder and the objects its stages share (data, space, supernet)."""

    def __init__(self, cfg: RunConfig, run_dir: Path, progress: bool = True) -> None:
        self.cfg = cfg
        self.dir = run_dir
        self.progress = progress
        self.derived: Optional[dict[str, Any]] = None  # set by train_supernet (derived.json's content)
        self.device = resolve_device(cfg.device)
        set_threads(cfg.threads)

    # ---- folder ---------------------------------------------------------------------------------
    @classmethod
    def create(cls, cfg: RunConfig, progress: bool = True, resume: bool = False) -> "Run":
        """Make (or reopen) `runs_dir/name` and write the resolved config. Reopening an existing run
        folder needs the same training-relevant config, so a checkpoint is never silently mixed."""
        run_dir = Path(cfg.runs_dir) / cfg.name
        if distributed.rank_and_world()[0] != 0:
            return cls(cfg, run_dir, progress)  # under torchrun rank 0 checks and writes the folder
        config_file = run_dir / "config.yaml"
        if config_file.is_file():
            old = from_dict(RunConfig, load_yaml(config_file))
            for section in ("space", "data", "train"):
                if to_dict(getattr(old, section)) != to_dict(getattr(cfg, section)):
                    if resume or (run_dir / "checkpoint.pt").is_file():
                        raise ConfigError(
                            f"run folder {run_dir} holds a run with a different '{section}' config; "
                            f"choose another name (name=...) or delete the folder")
        run_dir.mkdir(parents=True, exist_ok=True)
        config_file.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return cls(cfg, run_dir, progress)

    @classmethod
    def open(cls, run_dir: Union[str, Path], overrides: Optional[list[str]] = None,
             progress: bool = True) -> "Run":
        run_dir = Path(run_dir)
        config_file = run_dir / "config.yaml"
        if not config_file.is_file():
            raise ConfigError(f"{run_dir} is not a run folder (no config.yaml); create one with "
                              f"`flexnas run CONFIG` or `flexnas supernet CONFIG`")
        cfg = from_dict(RunConfig, apply_overrides(load_yaml(config_file), overrides or []))
        return cls(cfg, run_dir, progress)

    def save_config(self) -> None:
        """Rewrite config.yaml with this run's config (e.g. after `--latency-table` set `cost`)."""
        (self.dir / "config.yaml").write_text(yaml.safe_dump(to_dict(self.cfg), sort_keys=False))

    # ---- shared objects -------------------------------------------------------------------------
    @cached_property
    def data(self) -> DataBundle:
        rank, world = distributed.rank_and_world()   # under torchrun, `train` is this rank's shard
        return build_data(self.cfg.data, self.device, cache_dir=self.dir / "cache", rank=rank, world_size=world)

    @cached_property
    def space(self) -> SearchSpace:
        space = self.cfg.space.build(self.data.input_size, self.data.num_classes)
        cost = self.cfg.cost
        if cost.latency_table:
            table = Path(cost.latency_table)
            if not table.is_file() and (self.dir / table).is_file():
                table = self.dir / table  # a path relative to the run folder
            space.cost_model(latency=table, allow_foreign_table=cost.allow_foreign_table)
        return space

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "checkpoint.pt"

    def trained_supernet(self) -> torch.nn.Module:
        from flexnas.train.checkpoint import load_checkpoint

        if not self.checkpoint_path.is_file():
            raise CheckpointError(f"{self.dir} has no trained supernet (no checkpoint.pt); "
                                  f"run `flexnas supernet {self.dir / 'config.yaml'}` first")
        state = load_checkpoint(self.checkpoint_path)
        saved = state["meta"].get("space", {})
        if saved.get("name") != self.space.name:
            raise CheckpointError(f"checkpoint {self.checkpoint_path} is for space '{saved.get('name')}', "
                                  f"the run config says '{self.space.name}'")
        net = self.space.supernet()
        try:
            net.load_state_dict(state["supernet"])
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint {self.checkpoint_path} does not fit the space "
                                  f"'{self.space.name}': {str(exc).splitlines()[0]}") from None
        # channels-last: the layout the trainer and evaluator run in (faster depthwise convolutions)
        return net.to(self.device, memory_format=torch.channels_last).eval()

    # ---- stages ---------------------------------------------------------------------------------
    def train_supernet(self, resume: bool = False) -> dict[str, float]:
        from flexnas.train.trainer import Trainer, tensorboard_writer

        # Under torchrun: join the process group (a no-op otherwise); ranks must agree on the whole
        # config, and only rank 0 writes TensorBoard events.
        rank, _ = distributed.join(self.device)
        distributed.check_same("run config", to_dict(self.cfg))
        torch.manual_seed(self.cfg.seed)
        supernet = self.space.supernet()
        writer = tensorboard_writer(self.dir) if rank == 0 else None
        try:
            trainer = Trainer(self.space, supernet, self.data.train, self.cfg.train, self.dir, self.device,
                              self.cfg.seed, writer=writer, progress=self.progress, val_batches=self.data.val)
            final = trainer.fit(resume=resume)
            self.derived = trainer.derived  # the arch a differentiable / DSNAS strategy picked, or None
            return final
        finally:
            if writer is not None:
                writer.close()

    def evaluator(self, supernet: Optional[torch.nn.Module] = None, split: str = "val",
                  test_images: Optional[int] = None) -> Any:
        """The run's BN-recalibrating path evaluator on the search-validation split (`val`, capped at
        `evaluate.max_val_batches`) or, to check a search's picks on unseen images, the whole `test`
        split; `test_images=N` scores on N class-balanced test images instead of `data.max_test`
        (the run's own test split can be too small to separate archs a point apart)."""
        from flexnas.evaluate import SupernetEvaluator

        if split not in ("val", "test"):
            raise ConfigError(f"evaluator split must be 'val' or 'test', got {split!r}")
        if test_images is not None and split != "test":
            raise ConfigError("test_images sets the size of the test split; pass split='test' with it")
        data = self.data
        if test_images is not None:
            data = build_data(dataclasses.replace(self.cfg.data, max_test=test_images), self.device,
                              cache_dir=self.dir / "cache")
        ec = self.cfg.evaluate
        return SupernetEvaluator(supernet or self.trained_supernet(), self.space, data.train_eval,
                                 getattr(data, split), self.device, bn_batches=ec.bn_batches,
                                 max_val_batches=ec.max_val_batches if split == "val" else None)

    def scorer_id(self) -> str:
        """What the archive's scores depend on: the supernet checkpoint's bytes, the evaluation and
        data settings, and the evaluator's version. A search refuses an archive with another one."""
        from flexnas.evaluate import SCORING_VERSION

        digest = hashlib.sha1()
        with open(self.checkpoint_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        data = {k: v for k, v in to_dict(self.cfg.data).items() if k not in ("workers", "stream")}
        digest.update(json.dumps({"evaluate": to_dict(self.cfg.evaluate), "data": data,
                                  "version": SCORING_VERSION}, sort_keys=True, default=str).encode())
        return digest.hexdigest()[:24]

    def search(self, targets: Optional[list[str]] = None, **changes: Any) -> SearchResult:
        """Search the trained supernet for every target; the archive makes it resumable."""
        sc = to_dict(self.cfg.search)
        sc.update({k: v for k, v in changes.items() if v is not None})
        if targets:
            sc["targets"] = list(targets)
        search_cfg = from_dict(SearchConfig, sc)
        if not search_cfg.targets:
            raise ConfigError("no search targets: pass --target 'macs<=300M' (repeatable) or set search.targets")
        evaluator = self.evaluator()
        with Archive(self.dir / "archive.sqlite", self.space, scorer=self.scorer_id()) as archive:
            result = run_search(self.space, evaluator, search_cfg, archive=archive, progress=self.progress)
        chosen = {target: {"arch": rec.text, **{k: float(v) for k, v in rec.metrics.items()}}
                  for target, rec in result.best.items()}
        (self.dir / "chosen.json").write_text(json.dumps(chosen, indent=2))
        return result

    # ---- the architecture generator (docs/generator.md) ----------------------------------------
    @property
    def generator_path(self) -> Path:
        return self.dir / "generator.pt"

    def generator_batches(self, cfg: Any) -> Any:
        """The image stream the generator's cross-entropy reads (`generator.ce_data`): the training
        split, or the search-validation split (unaugmented, the images searches select on)."""
        return self.data.val if cfg.ce_data == "val" else self.data.train

    def fit_generator(self, **changes: Any) -> Any:
        """Fit the SGNAS-style generator through the trained (frozen) supernet and save it as
        generator.pt. Knobs come from the `generator:` config section; `changes` (steps=, metrics=,
        ...) override them for this call. Losses go to TensorBoard under `generator/`."""
        import time

        from flexnas.search.generator import Generator
        from flexnas.train.trainer import tensorboard_writer

        cfg = self.cfg.generator.replace(**changes)
        gen = Generator.from_config(self.space, cfg)
        supernet = self.trained_supernet()
        writer = tensorboard_writer(self.dir)

        def log(step: int, losses: dict[str, float]) -> None:
            if step % 10 == 0 or step == cfg.steps - 1:
                for key, value in losses.items():
                    writer.add_scalar(f"generator/{key}", value, step)

        start = time.perf_counter()
        try:
            final = gen.fit(supernet, self.space, self.generator_batches(cfg), cfg, device=self.device,
                            progress=self.progress, log=log)
        finally:
            writer.close()
        gen.info = {"config": to_dict(cfg), "final": final, "fit_seconds": time.perf_counter() - start}
        gen.save(self.generator_path, gen.info)
        return gen

    def generate(self, targets: Sequence[Any], evaluate: bool = False,
                 priors: Optional[Sequence[Any]] = None, decode: Optional[str] = None) -> list[dict[str, Any]]:
        """One arch per target from generator.pt, in one forward pass: each row holds the arch, its
        exact costs, the asked values and relative errors, and with `evaluate` the supernet's
        BN-recalibrated accuracy. A target outside the space's range raises ConstraintError.
        `priors`: one prior arch (or arch string, or None) per target, for a generator fitted with
        `prior_pool > 0`. `decode`: 'argmax' or 'budget' (default: the config's `generator.decode`)."""
        from flexnas.search.generator import Generator

        cfg = self.cfg.generator.replace(decode=decode)
        gen = Generator.load(self.generator_path, self.space, self.device)
        rows = gen.generate_with_costs(list(targets), priors=priors, decode=cfg.decode, band=cfg.decode_band)
        if evaluate:
            evaluator = self.evaluator()
            for row in rows:
                row.update(evaluator.evaluate(row["arch"]))
        return rows

    def report(self, result: Optional[SearchResult] = None,
               pairs: Sequence[tuple[str, str]] = ()) -> Path:
        """report.md, pareto.png (MACs vs accuracy), one picture per extra (x, y) metric pair, and the
        supernet's training curves."""
        from flexnas.report import load_history, write_report
        from flexnas.search import Constraint, best_per_target

        with Archive(self.dir / "archive.sqlite", self.space) as archive:
            records = archive.records()
        if result is not None:
            best = result.best
        else:
            targets = self.cfg.search.targets
            chosen_file = self.dir / "chosen.json"
            if chosen_file.is_file():
                targets = list(json.loads(chosen_file.read_text()))
            best = best_per_target(records, [Constraint.parse(t) for t in targets])
        return write_report(self.dir, self.space, records, best, title=f"flexnas run '{self.cfg.name}'",
                            pairs=pairs, history=load_history(self.dir))
