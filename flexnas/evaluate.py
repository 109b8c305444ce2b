"""Scoring an architecture with the trained supernet's shared weights.

The supernet's BatchNorm running statistics are a blend over every path trained through it, which is
wrong for any single path. `SupernetEvaluator` therefore extracts the path as a standalone copy,
resets its BN statistics and recomputes them on a few training batches (as SPOS and Once-for-All
do) before measuring validation accuracy. The supernet itself is never modified.
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from flexnas.arch import Arch
from flexnas.errors import DataError
from flexnas.train.trainer import Batches, prepare_input

if TYPE_CHECKING:
    from flexnas.spaces.base import SearchSpace
    from flexnas.supernet import Supernet

__all__ = ["SupernetEvaluator", "evaluate_model", "recalibrate_bn"]

BatchSource = Union[Batches, Iterable[Any]]


# Bump when the same supernet and settings would be scored differently, so search archives written
# before are refused rather than mixed in (2: calibration batches are class-mixed, see flexnas.data).
SCORING_VERSION = 2


def _take(batches: BatchSource, num_batches: Optional[int]) -> Iterable[Any]:
    """The first `num_batches` batches of a Batches (epoch 0) or of any iterable (all when None)."""
    stream = batches.epoch(0) if hasattr(batches, "epoch") else batches
    return stream if num_batches is None else itertools.islice(stream, num_batches)


def _device_of(model: nn.Module) -> torch.device:
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


def recalibrate_bn(model: nn.Module, batches: BatchSource, num_batches: Optional[int] = None) -> int:
    """Reset every BatchNorm's running statistics in `model` and recompute them on `num_batches`
    batches (tensors or (x, y) pairs) as a cumulative average over the batches (momentum=None).

    Only the BN layers run in train mode, so dropout and friends stay off while the statistics are
    gathered. The model's train/eval mode and each BN's momentum are restored. Returns the number of
    batches used; raises DataError if there were none."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    modes = {m: m.training for m in model.modules()}
    momenta = [bn.momentum for bn in bns]
    device = _device_of(model)
    used = 0
    try:
        model.eval()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        with torch.no_grad():
            for batch in _take(batches, num_batches):
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                model(prepare_input(x, device))
                used += 1
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        for m, mode in modes.items():
            m.training = mode
    if used == 0 and bns:
        raise DataError("BatchNorm recalibration got no batches: the calibration data is empty")
    return used


def evaluate_model(model: nn.Module, batches: BatchSource, device: Union[str, torch.device, None] = None,
                   max_batches: Optional[int] = None, topk: int = 5, amp: bool = False,
                   warmup: bool = True) -> dict[str, float]:
    """Top-1 and top-`topk` accuracy in [0, 1], mean cross-entropy, images and images per second of
    `model` in eval mode over `batches` (epoch 0 of a Batches, or any iterable of (x, y)).

    `top5` counts a hit when the label is among the min(topk, classes) largest logits. Images per
    second times the forward passes only (CUDA-synchronised), not data loading, after one untimed
    warm-up forward (`warmup`; the first call pays for allocator and kernel setup). The model's
    train/eval mode is restored afterwards."""
    device = torch.device(device) if device is not None else _device_of(model)
    was_training = model.training
    model.eval()
    correct1 = torch.zeros((), dtype=torch.float64, device=device)
    correctk = torch.zeros((), dtype=torch.float64, device=device)
    loss = torch.zeros((), dtype=torch.float64, device=device)
    images, seconds = 0, 0.0
    autocast = torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda")
    try:
        with torch.no_grad():
            for x, y in _take(batches, max_batches):
                x, y = prepare_input(x, device), y.to(device)
                if warmup and images == 0:
                    with autocast:
                        model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                with autocast:
                    logits = model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds += time.perf_counter() - start
                logits = logits.float()
                loss += F.cross_entropy(logits, y, reduction="sum").double()
                top = logits.topk(min(topk, logits.shape[1]), dim=1).indices
                hits = top == y[:, None]
                correct1 += hits[:, 0].sum()
                correctk += hits.any(dim=1).sum()
                images += int(y.shape[0])
    finally:
        model.train(was_training)
    if images == 0:
        raise DataError("the evaluation data yields no batches")
    return {"top1": float(correct1) / images, f"top{topk}": float(correctk) / images,
            "loss": float(loss) / images, "images": float(images),
            "images_per_sec": images / max(seconds, 1e-9)}


class SupernetEvaluator:
    """`evaluate(arch) -> {"accuracy", "loss"}` of one path of a trained supernet, with BN recalibration.

    The first `bn_batches` batches of the calibration stream and the validation batches (at most
    `max_val_batches`) are materialised on `device` once, at construction, so each evaluation costs
    one extract, `bn_batches` forwards and one validation pass. `bn_batches=0` skips recalibration and
    scores the path with the supernet's shared running statistics (only useful for comparison)."""

    def __init__(self, supernet: "Supernet", space: "SearchSpace", calib_batches: BatchSource,
                 val_batches: BatchSource, device: Union[str, torch.device], bn_batches: int = 20,
                 max_val_batches: Optional[int] = None) -> None:
        if bn_batches < 0:
            raise DataError(f"bn_batches must be >= 0, got {bn_batches}")
        self.supernet = supernet
        self.space = space
        self.device = torch.device(device)
        self.bn_batches = bn_batches
        # Paths run in channels-last layout: on CPU, PyTorch's depthwise convolutions are several times
        # faster in it (an evaluation of the quickstart's paths: 1.9 s -> 0.55 s), same results.
        self.calib = [prepare_input(b[0] if isinstance(b, (tuple, list)) else b, self.device, channels_last=True)
                      for b in _take(calib_batches, bn_batches)] if bn_batches else []
        if bn_batches and not self.calib:
            raise DataError("the calibration data yields no batches; BN recalibration needs training batches")
        self.val = [(prepare_input(x, self.device, channels_last=True), y.to(self.device))
                    for x, y in _take(val_batches, max_val_batches)]
        if not self.val:
            raise DataError("the validation data yields no batches")
        self.num_val = sum(int(y.shape[0]) for _, y in self.val)

    def path(self, arch: Arch) -> nn.Module:
        """The standalone network `evaluate` scores: extracted and BN-recalibrated, in eval mode."""
        self.space.validate(arch)
        net = self.supernet.extract(arch).to(self.device, memory_format=torch.channels_last)
        if self.bn_batches:
            recalibrate_bn(net, self.calib)
        return net.eval()

    def evaluate(self, arch: Arch) -> dict[str, float]:
        """Top-1 accuracy in [0, 1] and mean cross-entropy on the validation batches."""
        m = evaluate_model(self.path(arch), self.val, self.device, topk=1, warmup=False)
        return {"accuracy": m["top1"], "loss": m["loss"]}

    __call__ = evaluate
