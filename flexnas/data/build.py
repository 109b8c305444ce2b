"""`build_data`: from a DataConfig to the train / val / test / train_eval batch streams of one run."""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch

from flexnas.data.augment import Normalizer, channel_stats, default_pad
from flexnas.data.batches import Augment, Batches, EmptyBatches, StreamBatches, TensorBatches
from flexnas.data.config import DataConfig, validate
from flexnas.data.sources import ImageSet, Source, load_source
from flexnas.data.split import balanced_subset, generator, stratified_split
from flexnas.errors import DataError
from flexnas.io import atomic_torch_save

IN_MEMORY_MAX_BYTES = 2 * 1024 ** 3   # auto mode streams datasets whose decoded uint8 pixels exceed this
STATS_SAMPLE = 2048                   # images decoded to estimate mean/std in stream mode
CACHE_VERSION = 1
_SPLIT_SALT = 0x5917


@dataclass
class DataBundle:
    """Everything a run needs from the data: four batch streams and the shape of the problem."""

    train: Batches        # supernet-training part of the train split (shuffled, augmented)
    val: Batches          # search-validation part of the train split (fixed mixed order, no augmentation)
    test: Batches         # the test split (fixed mixed order, no augmentation)
    train_eval: Batches   # the images of `train`, unaugmented, fixed mixed order (BN recalibration)
    num_classes: int
    channels: int
    input_size: int
    class_names: list[str]
    mean: tuple[float, ...] = ()   # per-channel normalisation, [0, 1] units (needed again at export)
    std: tuple[float, ...] = ()
    stream: bool = False           # True when batches are decoded by DataLoader workers
    test_order: Optional[torch.Tensor] = None  # file index of each image of `test`, in stream order


def cache_path(cfg: DataConfig, source: Source, cache_dir: Path, kind: str = "images") -> Path:
    """Cache file for what depends on the files and on name/root/resize/max_* (not on split or seed)."""
    key = json.dumps({"v": CACHE_VERSION, "kind": kind, "name": cfg.name, "stamp": source.stamp,
                      "resize": cfg.resize, "max_train": cfg.max_train, "max_test": cfg.max_test},
                     sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"data-{cfg.name}-{kind}-{digest}.pt"


def _load_cache(path: Path) -> Optional[dict[str, Any]]:
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: decode again rather than fail the run
        warnings.warn(f"ignoring unreadable data cache {path} ({exc}); decoding again", stacklevel=3)
        return None


def _save_cache(path: Path, payload: dict[str, Any]) -> None:
    """Atomic, so a killed run never leaves a half-written cache that a resume would trust."""
    atomic_torch_save(payload, path)


def _decoded(cfg: DataConfig, source: Source, train_set: ImageSet, test_set: ImageSet,
             cache_dir: Optional[Path]) -> dict[str, Any]:
    """uint8 train/test tensors and train-split mean/std, decoded once and cached in `cache_dir`."""
    path = cache_path(cfg, source, cache_dir) if cache_dir is not None else None
    payload = _load_cache(path) if path is not None else None
    if payload is not None:
        return payload
    train_x = train_set.decode_all(cfg.workers)
    mean, std = channel_stats(train_x)
    payload = {"train_x": train_x, "train_y": train_set.labels.clone(),
               "test_x": test_set.decode_all(cfg.workers), "test_y": test_set.labels.clone(),
               "mean": list(mean), "std": list(std)}
    if path is not None:
        _save_cache(path, payload)
    return payload


def _stream_stats(cfg: DataConfig, source: Source, train_set: ImageSet,
                  cache_dir: Optional[Path]) -> tuple[list[float], list[float]]:
    """Mean/std from an evenly spaced sample of the train split, so streaming needs no full pass."""
    path = cache_path(cfg, source, cache_dir, kind="stats") if cache_dir is not None else None
    payload = _load_cache(path) if path is not None else None
    if payload is None:
        step = max(1, len(train_set) // STATS_SAMPLE)
        sample = train_set.subset(torch.arange(0, len(train_set), step)[:STATS_SAMPLE])
        mean, std = channel_stats(sample.decode_all(cfg.workers))
        payload = {"mean": list(mean), "std": list(std)}
        if path is not None:
            _save_cache(path, payload)
    return payload["mean"], payload["std"]


def _mixed(indices: torch.Tensor, seed: int, stream: int) -> torch.Tensor:
    """`indices` in a seeded random order (the same for the same seed and stream)."""
    return indices[torch.randperm(len(indices), generator=generator(seed, _SPLIT_SALT, stream))]


def build_data(cfg: DataConfig, device: Union[torch.device, str] = "cpu", cache_dir: Optional[Path] = None,
               rank: int = 0, world_size: int = 1) -> DataBundle:
    """Load, split, cache and batch the dataset that `cfg` names; nothing is ever downloaded.

    The train split is divided (stratified, by cfg.seed) into the supernet-training part and the
    search-validation part; the test split is only ever in `test`. With world_size > 1 each rank's
    `train` yields a disjoint, equally long shard of every epoch (cfg.batch_size is per rank); the
    eval streams are not sharded.
    """
    validate(cfg)
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"rank={rank} must be in [0, world_size={world_size})")
    device = torch.device(device)
    source = load_source(cfg)
    train_set, test_set = source.train, source.test
    if cfg.max_train is not None:
        train_set = train_set.subset(balanced_subset(train_set.labels, cfg.max_train))
    if cfg.max_test is not None:
        test_set = test_set.subset(balanced_subset(test_set.labels, cfg.max_test))
    stream = cfg.stream if cfg.stream is not None else (
        train_set.nbytes() + test_set.nbytes() > IN_MEMORY_MAX_BYTES)

    if stream:
        mean, std = _stream_stats(cfg, source, train_set, cache_dir)
        train_y = train_set.labels
    else:
        payload = _decoded(cfg, source, train_set, test_set, cache_dir)
        mean, std, train_y = payload["mean"], payload["std"], payload["train_y"]

    fit_idx, val_idx = stratified_split(train_y, cfg.train_portion, generator(cfg.seed, _SPLIT_SALT))
    # The eval streams (train_eval, val, test) are read front to back, and BN recalibration uses the
    # first batches of train_eval. Folder datasets list their files class by class, so in file order
    # those batches would hold one or two classes and the recalibrated statistics would be wrong. One
    # seeded permutation per stream makes every prefix class-mixed and keeps the order reproducible
    # (the test order does not depend on the run seed, like the test split itself).
    fit_idx, val_idx = _mixed(fit_idx, cfg.seed, 1), _mixed(val_idx, cfg.seed, 2)
    test_order = _mixed(torch.arange(len(test_set)), 0, 3)
    if len(fit_idx) < cfg.batch_size * world_size:
        raise DataError(f"the supernet-training part has {len(fit_idx)} images, fewer than one batch "
                        f"(data.batch_size={cfg.batch_size} x world_size={world_size}); lower "
                        "data.batch_size or raise data.max_train / data.train_portion")

    normalize = Normalizer(tuple(mean), tuple(std))
    size = source.input_size
    augment = None
    if cfg.augment:
        augment = Augment(pad=default_pad(size, cfg.crop_pad),
                          flip=source.flip_default if cfg.flip is None else cfg.flip, cutout=cfg.cutout)
    common = {"seed": cfg.seed, "normalize": normalize, "device": device}
    train_kw = {**common, "train": True, "augment": augment, "rank": rank, "world_size": world_size}
    eval_kw = {**common, "train": False, "augment": None}

    val: Batches
    if stream:
        fit_set = train_set.subset(fit_idx)
        train: Batches = StreamBatches(fit_set, cfg.batch_size, cfg.workers, **train_kw)
        train_eval: Batches = StreamBatches(fit_set, cfg.eval_batch_size, cfg.workers, **eval_kw)
        test: Batches = StreamBatches(test_set.subset(test_order), cfg.eval_batch_size, cfg.workers, **eval_kw)
        if len(val_idx):
            val = StreamBatches(train_set.subset(val_idx), cfg.eval_batch_size, cfg.workers, **eval_kw)
    else:
        train_x, test_x = payload["train_x"], payload["test_x"]
        fit_x, fit_y = train_x[fit_idx].to(device), train_y[fit_idx].to(device)
        train = TensorBatches(fit_x, fit_y, cfg.batch_size, **train_kw)
        train_eval = TensorBatches(fit_x, fit_y, cfg.eval_batch_size, **eval_kw)
        test = TensorBatches(test_x[test_order], payload["test_y"][test_order], cfg.eval_batch_size, **eval_kw)
        if len(val_idx):
            val = TensorBatches(train_x[val_idx], train_y[val_idx], cfg.eval_batch_size, **eval_kw)
    if not len(val_idx):
        why = ("data.train_portion=1.0 leaves no search-validation images"
               if cfg.train_portion >= 1.0 else
               f"data.train_portion={cfg.train_portion} of {len(train_y)} train images leaves none")
        val = EmptyBatches(f"search needs a validation split, but {why}; set data.train_portion < 1 "
                           "(e.g. 0.8)")
    return DataBundle(train=train, val=val, test=test, train_eval=train_eval,
                      num_classes=len(source.class_names), channels=source.channels, input_size=size,
                      class_names=list(source.class_names), mean=tuple(mean), std=tuple(std),
                      stream=stream, test_order=test_order)
