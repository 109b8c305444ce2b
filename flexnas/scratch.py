"""Training one architecture from scratch, and evaluating trained models.

    runs/<name>/config.yaml     the resolved ScratchConfig (arch string included)
    runs/<name>/checkpoint.pt   training state (atomic; `--resume` continues it exactly)
    runs/<name>/history.json    one record per epoch: train loss/acc, lr, val top-1/top-5/loss
    runs/<name>/tb/             TensorBoard scalars
    runs/<name>/model.pt        the weights evaluated (EMA when the recipe keeps one) + what rebuilds them
    runs/<name>/metrics.json    test top-1/top-5/loss, images/s, MACs, params, final train metrics

The network is `space.subnet(arch, **subnet)`, trained by the one `Trainer` loop with the
`standalone` strategy, so optimizers, schedules, AMP, torchrun, checkpoints and exact resume are the
supernet's. `flexnas train` and `flexnas eval` are thin wrappers over `ScratchRun` and `load_model`.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Optional, Union

import torch
import yaml
from torch import nn

from flexnas.arch import Arch
from flexnas.config import apply_overrides, from_dict, load_yaml, to_dict
from flexnas.data import DataBundle, DataConfig, build_data
from flexnas.errors import ArchError, CheckpointError, ConfigError, ConstraintError, DataError, did_you_mean
from flexnas.pipeline import SpaceConfig, resolve_device, set_threads
from flexnas.spaces import SearchSpace
from flexnas.train.checkpoint import load_checkpoint, save_checkpoint
from flexnas.train.trainer import TrainConfig

__all__ = ["ScratchConfig", "ScratchRun", "load_scratch_config", "config_from_search_run", "load_model",
           "evaluate_checkpoint", "MODEL_NAME"]

MODEL_NAME = "model.pt"
MODEL_KIND = "flexnas-standalone"


@dataclass
class ScratchConfig:
    """`arch` is a string of `space`; `subnet` holds standalone-only options of the space's blocks
    (`se_ratio`, `act`: SGNAS-A/B/C use SE and h-swish). `train.strategy` must be `standalone`; its
    `strategy_args` take `ema_decay` and `drop_connect`."""

    name: str = "scratch"
    seed: int = 0
    device: str = "auto"
    threads: Optional[int] = None
    runs_dir: str = "runs"
    arch: str = ""
    space: SpaceConfig = field(default_factory=SpaceConfig)
    subnet: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(strategy="standalone"))
    max_val_batches: Optional[int] = None  # per-epoch validation on at most this many batches


def _resolve(data: dict[str, Any], overrides: Optional[list[str]] = None) -> ScratchConfig:
    data = apply_overrides(data, overrides or [])
    data.setdefault("train", {}).setdefault("strategy", "standalone")
    cfg = from_dict(ScratchConfig, data)
    if cfg.train.strategy != "standalone":
        raise ConfigError(f"flexnas train trains one network: train.strategy must be 'standalone', "
                          f"got '{cfg.train.strategy}' (supernet strategies belong to `flexnas supernet`)")
    return cfg


def load_scratch_config(path: Union[str, Path], overrides: Optional[list[str]] = None) -> ScratchConfig:
    return _resolve(load_yaml(path), overrides)


def config_from_search_run(run_dir: Union[str, Path], target: str, recipe: Optional[Union[str, Path]] = None,
                           overrides: Optional[list[str]] = None) -> ScratchConfig:
    """A ScratchConfig for the arch a search run chose for `target` (runs/<name>/chosen.json): the run's
    space and data, the training recipe from `recipe` (a train_*.yaml) or the defaults."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml)")
    chosen_file = run_dir / "chosen.json"
    if not chosen_file.is_file():
        raise ConfigError(f"{run_dir} has no chosen.json: run `flexnas search {run_dir} --target '{target}'` first")
    chosen = json.loads(chosen_file.read_text())
    key = target
    if key not in chosen:
        from flexnas.search import Constraint

        try:  # the same target spelled differently ('macs<=1000K' for 'macs<=1M') is the same target
            key = next((k for k in chosen if Constraint.parse(k) == Constraint.parse(target)), target)
        except ConstraintError:
            pass
    if key not in chosen:
        raise ConstraintError(f"{run_dir}/chosen.json has no arch for target '{target}'"
                              f"{did_you_mean(target, chosen)}; it has: {', '.join(chosen) or 'none'}")
    run_cfg = load_yaml(run_dir / "config.yaml")
    base = load_yaml(recipe) if recipe is not None else {}
    base["space"] = run_cfg.get("space", {})
    base.setdefault("data", run_cfg.get("data", {}))
    base["arch"] = chosen[key]["arch"]
    base["name"] = f"{run_cfg.get('name', run_dir.name)}_scratch"  # name=... still overrides it
    base.setdefault("runs_dir", run_cfg.get("runs_dir", "runs"))
    return _resolve(base, overrides)


def decode_arch(space: SearchSpace, text: str) -> Arch:
    """`space.decode(text)`; when the string is another space's arch, the error says which."""
    if not text:
        raise ArchError(f"no architecture given: pass --arch or set `arch:` (a {space.name} arch string)")
    try:
        return space.decode(text)
    except ArchError as exc:
        from flexnas import spaces

        name = spaces.owner_of(text, like=space)
        if name is not None:
            raise ArchError(f"{exc}; this is a '{name}' arch: use --space {name} (space.name={name})") from None
        raise


class ScratchRun:
    """One from-scratch training run folder."""

    def __init__(self, cfg: ScratchConfig, run_dir: Path, progress: bool = True) -> None:
        self.cfg, self.dir, self.progress = cfg, run_dir, progress
        self.device = resolve_device(cfg.device)  # under torchrun: this rank's GPU, as for supernets
        set_threads(cfg.threads)

    @classmethod
    def create(cls, cfg: ScratchConfig, progress: bool = True, resume: bool = False) -> "ScratchRun":
        """Make (or reopen) `runs_dir/name`. A folder holding a checkpoint is only reopened with the
        same arch, space, subnet options, data and training config, so runs never mix."""
        run_dir = Path(cfg.runs_dir) / cfg.name
        config_file = run_dir / "config.yaml"
        has_ckpt = (run_dir / "checkpoint.pt").is_file()
        if has_ckpt and not resume:
            raise CheckpointError(f"{run_dir} already has a checkpoint: pass --resume to continue it, "
                                  f"or choose another name=...")
        if config_file.is_file() and (has_ckpt or resume):
            old = _resolve(load_yaml(config_file))
            for section in ("arch", "space", "subnet", "data", "train", "seed"):
                a, b = getattr(old, section), getattr(cfg, section)
                if (to_dict(a) if hasattr(a, "__dataclass_fields__") else a) != \
                        (to_dict(b) if hasattr(b, "__dataclass_fields__") else b):
                    raise ConfigError(f"run folder {run_dir} holds a run with a different '{section}'; "
                                      f"choose another name (name=...) or delete the folder")
        run = cls(cfg, run_dir, progress)
        run.arch  # fail on a bad arch before anything is written
        if run.rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            config_file.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return run

    @property
    def rank(self) -> int:
        from flexnas.train import distributed

        return distributed.rank_and_world()[0]

    # ---- shared objects -------------------------------------------------------------------------
    @cached_property
    def data(self) -> DataBundle:
        from flexnas.train import distributed

        rank, world = distributed.rank_and_world()
        return build_data(self.cfg.data, self.device, cache_dir=self.dir / "cache", rank=rank, world_size=world)

    @cached_property
    def space(self) -> SearchSpace:
        return self.cfg.space.build(self.data.input_size, self.data.num_classes)

    @cached_property
    def arch(self) -> Arch:
        return decode_arch(self.space, self.cfg.arch)

    def network(self) -> nn.Module:
        """A freshly initialised standalone network (seeded by `seed`)."""
        torch.manual_seed(self.cfg.seed)
        return self.space.subnet(self.arch, **self.cfg.subnet)

    def costs(self) -> dict[str, int]:
        """MACs and params of the network as built (SE options included), counted on the meta device."""
        from flexnas.cost.counter import count

        with torch.device("meta"):
            net = self.space.subnet(self.arch, **self.cfg.subnet)
        return count(net, (3, self.space.input_size, self.space.input_size))

    # ---- training -------------------------------------------------------------------------------
    def train(self, resume: bool = False, callbacks: Sequence[Callable[[Any], None]] = ()) -> dict[str, Any]:
        """Train (or resume) to `train.epochs`, validating each epoch when the data has a validation
        split, then score the test split; writes model.pt and metrics.json. Returns metrics.json's dict.
        `callbacks` run after every step as in `Trainer` (progress hooks, tests that kill a run)."""
        from flexnas.evaluate import evaluate_model
        from flexnas.train import distributed
        from flexnas.train.trainer import Trainer, tensorboard_writer

        # Under torchrun: join the process group as supernet training does (a no-op otherwise).
        distributed.join(self.device)
        distributed.check_same("run config", to_dict(self.cfg))
        net = self.network()
        data = self.data
        writer = tensorboard_writer(self.dir) if self.rank == 0 else None
        trainer: Optional[Trainer] = None

        def validate(t: Trainer) -> dict[str, float]:
            if len(data.val) == 0:
                return {}
            m = evaluate_model(t.strategy.eval_model(), data.val, self.device,  # type: ignore[attr-defined]
                               max_batches=self.cfg.max_val_batches)
            return {"val_top1": m["top1"], "val_top5": m["top5"], "val_loss": m["loss"]}

        try:
            trainer = Trainer(self.space, net, data.train, self.cfg.train, self.dir, self.device,
                              self.cfg.seed, writer=writer, progress=self.progress, epoch_end=validate,
                              callbacks=callbacks)
            final = trainer.fit(resume=resume)
            model = trainer.strategy.eval_model()  # type: ignore[attr-defined]
            test = evaluate_model(model, data.test, self.device, amp=self.cfg.train.amp)
            metrics = {"arch": self.space.encode(self.arch), "space": self.space.name,
                       "test_top1": test["top1"], "test_top5": test["top5"], "test_loss": test["loss"],
                       "test_images": int(test["images"]), "images_per_sec": test["images_per_sec"],
                       "weights": "ema" if self.cfg.train.strategy_args.get("ema_decay") else "final",
                       **self.costs(), "epochs": self.cfg.train.epochs, "train": final}
            if self.rank == 0:
                self._save_model(model)
                (self.dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
                if writer is not None:
                    for k in ("top1", "top5", "loss"):
                        writer.add_scalar(f"test/{k}", test[k], trainer.global_step)
            return metrics
        finally:
            if writer is not None:
                writer.close()

    def _save_model(self, model: nn.Module) -> Path:
        sc = self.space
        meta = {"kind": MODEL_KIND, "arch": sc.encode(self.arch), "subnet": dict(self.cfg.subnet),
                "space": {"name": sc.name, "input_size": sc.input_size, "num_classes": sc.num_classes,
                          "width_mult": sc.width_mult, "options": dict(self.cfg.space.options)},
                "data": to_dict(self.cfg.data), "mean": list(self.data.mean), "std": list(self.data.std)}
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return save_checkpoint(self.dir / MODEL_NAME, {"meta": meta, "state_dict": state})


# ---- evaluation of a trained model ------------------------------------------------------------------

def _model_from_meta(meta: dict[str, Any], state: dict[str, torch.Tensor], path: Path) -> nn.Module:
    from flexnas import spaces

    s = meta["space"]
    space = spaces.get(s["name"], input_size=s["input_size"], num_classes=s["num_classes"],
                       width_mult=s["width_mult"], **s.get("options", {}))
    net = space.subnet(space.decode(meta["arch"]), **meta.get("subnet", {}))
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the weights do not fit arch {meta['arch']}: "
                              f"{str(exc).strip().splitlines()[0]}") from None
    return net


def _exported_model(path: Path) -> Optional[tuple[nn.Module, dict[str, Any]]]:
    """A `flexnas export` result (card, model file or export folder) as (network, meta); None when
    `path` has no model card (a `flexnas train` folder or checkpoint)."""
    from flexnas import export

    try:
        card, _ = export.read_card(path)
    except CheckpointError:
        return None
    args = card["space"].get("args", {})
    meta = {"kind": MODEL_KIND, "arch": card["arch"],
            "space": {"name": card["space"]["name"], "input_size": args.get("input_size"),
                      "num_classes": args.get("num_classes"), "width_mult": args.get("width_mult")},
            "data": card.get("data"), "mean": card.get("input", {}).get("mean"),
            "std": card.get("input", {}).get("std")}
    return export.load(path), meta


def load_model(path: Union[str, Path]) -> tuple[nn.Module, dict[str, Any]]:
    """(network in eval mode, meta) from a `flexnas train` run folder, its model.pt, or its
    checkpoint.pt (the EMA weights when the run keeps an EMA), or from a `flexnas export` card,
    model file or folder (the network rebuilt from the exported weights). `meta` has space, arch, subnet options,
    the training data config and its normalisation mean/std."""
    path = Path(path)
    exported = _exported_model(path)
    if exported is not None:
        return exported
    if path.is_dir():
        folder = path
        path = path / MODEL_NAME if (path / MODEL_NAME).is_file() else path / "checkpoint.pt"
        if not path.is_file():
            raise CheckpointError(f"{folder} holds no {MODEL_NAME} or checkpoint.pt: train it with `flexnas train`")
    state = load_checkpoint(path)
    meta = state["meta"]
    if meta.get("kind") == MODEL_KIND:
        return _model_from_meta(meta, state["state_dict"], path).eval(), meta
    # A training checkpoint: the folder's config.yaml says what network it is.
    config_file = path.parent / "config.yaml"
    strategy = state["meta"].get("strategy")
    if strategy != "standalone":
        raise CheckpointError(f"{path} is a supernet checkpoint (strategy '{strategy}'), not a trained "
                              f"network: train a chosen arch with `flexnas train {path.parent} --target ...`")
    if not config_file.is_file():
        raise CheckpointError(f"{path} has no config.yaml beside it, which names its arch; "
                              f"evaluate the run's {MODEL_NAME} instead")
    run = ScratchRun(_resolve(load_yaml(config_file)), path.parent, progress=False)
    weights = state["strategy"].get("ema", state["supernet"])
    sc = run.cfg.space
    s = meta["space"]
    model_meta = {"kind": MODEL_KIND, "arch": run.cfg.arch, "subnet": dict(run.cfg.subnet),
                  "space": {"name": s["name"], "input_size": s["input_size"], "num_classes": s["num_classes"],
                            "width_mult": s["width_mult"], "options": dict(sc.options)},
                  "data": to_dict(run.cfg.data), "mean": None, "std": None}
    return _model_from_meta(model_meta, weights, path).eval(), model_meta


def evaluate_checkpoint(path: Union[str, Path], data: Optional[Union[str, Path]] = None,
                        overrides: Optional[list[str]] = None, split: str = "test", device: str = "auto",
                        max_batches: Optional[int] = None) -> dict[str, Any]:
    """Top-1/top-5, loss and images/s of a trained model on a split of a dataset.

    `data`: None (the data the model was trained on), a dataset name (`cifar10`, `imagefolder`, ...)
    or a YAML file (a data section, or a config holding one); `overrides` are DataConfig
    `key=value`s (`root=...`, `max_test=...`). Images are normalised with the statistics the model
    was trained with when the model records them."""
    from flexnas.data.augment import Normalizer
    from flexnas.evaluate import evaluate_model

    splits = ("test", "val", "train")
    if split not in splits:
        raise ConfigError(f"unknown split '{split}'{did_you_mean(split, splits)}; allowed: {', '.join(splits)}")
    model, meta = load_model(path)
    base: dict[str, Any] = dict(meta.get("data") or {})
    if data is not None:
        text = str(data)
        if text.endswith((".yaml", ".yml")) or Path(text).is_file():
            loaded = load_yaml(text)
            base = loaded.get("data", loaded)
        elif text != base.get("name"):
            base = {"name": text}
    cfg = from_dict(DataConfig, apply_overrides(base, [o.removeprefix("data.") for o in overrides or []]))
    dev = resolve_device(device)
    bundle = build_data(cfg, dev)
    size = meta["space"]["input_size"]
    if bundle.input_size != size:
        raise DataError(f"the model takes {size}x{size} images, the data gives {bundle.input_size}x"
                        f"{bundle.input_size}: set resize={size}")
    if bundle.num_classes != meta["space"]["num_classes"]:
        raise DataError(f"the model predicts {meta['space']['num_classes']} classes, the data has "
                        f"{bundle.num_classes}")
    batches = {"test": bundle.test, "val": bundle.val, "train": bundle.train_eval}[split]
    if meta.get("mean") and hasattr(batches, "normalize"):
        batches.normalize = Normalizer(tuple(meta["mean"]), tuple(meta["std"]))
    result = evaluate_model(model.to(dev), batches, dev, max_batches=max_batches)
    return {"checkpoint": str(path), "arch": meta["arch"], "space": meta["space"]["name"], "data": cfg.name,
            "split": split, "top1": result["top1"], "top5": result["top5"], "loss": result["loss"],
            "images": int(result["images"]), "images_per_sec": result["images_per_sec"], "device": str(dev)}
