"""The data options of a run: which images, how they are split, batched and augmented."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from flexnas.errors import DataError, did_you_mean

DATASETS = ("digits", "imagefolder", "cifar10", "cifar100", "npz")


@dataclass
class DataConfig:
    """Data options. `train_portion` of the TRAIN split trains the supernet; the rest is the search
    validation split (as SGNAS's train_portion), so search never sees the test split."""

    name: str = "digits"
    root: Optional[str] = None
    train_portion: float = 0.8
    batch_size: int = 64
    eval_batch_size: int = 256
    augment: bool = True
    flip: Optional[bool] = None        # None: the dataset's default (off for digits and npz)
    crop_pad: Optional[int] = None     # None: input_size // 8 (4 at 32 px, 1 at 8 px)
    cutout: int = 0                    # side of the Cutout square on training images (16 for CIFAR); 0: off
    max_train: Optional[int] = None
    max_test: Optional[int] = None
    seed: int = 0
    workers: int = 2
    stream: Optional[bool] = None      # None: in memory unless the decoded train+test exceed 2 GiB
    resize: Optional[int] = None


def validate(cfg: DataConfig) -> None:
    """Reject values that would fail later with an obscure error (or silently train on nothing)."""
    if cfg.name not in DATASETS:
        raise DataError(f"unknown dataset '{cfg.name}'{did_you_mean(cfg.name, DATASETS)}; "
                        f"set data.name to one of: {', '.join(DATASETS)}")
    if not 0.0 < cfg.train_portion <= 1.0:
        raise DataError(f"data.train_portion={cfg.train_portion} must be in (0, 1]; "
                        "e.g. 0.8 keeps 20% of the train split for search validation")
    for key in ("batch_size", "eval_batch_size"):
        if getattr(cfg, key) < 1:
            raise DataError(f"data.{key}={getattr(cfg, key)} must be at least 1")
    for key in ("max_train", "max_test", "resize"):
        value = getattr(cfg, key)
        if value is not None and value < 1:
            raise DataError(f"data.{key}={value} must be a positive integer or null")
    if cfg.crop_pad is not None and cfg.crop_pad < 0:
        raise DataError(f"data.crop_pad={cfg.crop_pad} must be >= 0 (or null for input_size // 8)")
    if cfg.cutout < 0:
        raise DataError(f"data.cutout={cfg.cutout} must be >= 0 (0 disables Cutout; 16 is the CIFAR-10 value)")
    if cfg.workers < 0:
        raise DataError(f"data.workers={cfg.workers} must be >= 0 (0 decodes in the main process)")
