"""Tiny in-memory implementations of the `Batches` protocol for training and evaluator tests."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import torch


@contextmanager
def one_thread() -> Iterator[None]:
    """These nets are tiny: a second intra-op thread gains nothing, and when other processes share
    the cores, OpenMP threads spin-waiting on each other make every step 10-30x slower. Module-scoped
    fixtures run before per-test fixtures, so they use this directly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class TensorBatches:
    """Shuffled mini-batches over in-memory tensors; the order depends only on (seed, epoch)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int = 0,
                 shuffle: bool = True) -> None:
        self.x, self.y, self.batch_size, self.seed, self.shuffle = x, y, batch_size, seed, shuffle

    def __len__(self) -> int:
        return len(self.x) // self.batch_size  # drop_last: every batch has the same size

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.shuffle:
            order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
        else:
            order = torch.arange(len(self.x))
        for i in range(start, len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.x[idx], self.y[idx]


@lru_cache(maxsize=1)
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's 8x8 digits as (N, 1, 8, 8) standardised floats and int64 labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - x.mean()) / x.std()
    return x, torch.tensor(data.target, dtype=torch.int64)


def digits_split(batch_size: int = 64, seed: int = 0) -> tuple[TensorBatches, TensorBatches]:
    """(train, val) Batches over digits: the first 1400 images train, the other 397 validate."""
    x, y = digits()
    return (TensorBatches(x[:1400], y[:1400], batch_size, seed),
            TensorBatches(x[1400:], y[1400:], batch_size, seed, shuffle=False))


def random_batches(n: int = 96, batch_size: int = 16, seed: int = 0) -> TensorBatches:
    """Random 3-channel 8x8 images with random labels: enough to exercise the loop quickly."""
    g = torch.Generator().manual_seed(seed)
    return TensorBatches(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g),
                         batch_size, seed)


def shallow_space():
    """The proxyless space (same candidates and blocks) on a 4-layer macro: the tiny 21-layer space
    needs hundreds of steps before random paths learn anything, this one learns in ~50."""
    from flexnas.ops.blocks import BlockStyle
    from flexnas.spaces.candidate import ProxylessSpace
    from flexnas.spaces.macro import Macro, Stage

    class ShallowProxyless(ProxylessSpace):
        macro = Macro(stem_channels=16, stages=(Stage(16, 2, 1), Stage(32, 2, 2)), head_channels=64,
                      style=BlockStyle(act="relu6"))

    return ShallowProxyless(input_size=8, num_classes=10, width_mult=0.5)


def prototype_split(n_train: int = 320, n_val: int = 128, noise: float = 0.5,
                    batch_size: int = 32) -> tuple[TensorBatches, TensorBatches]:
    """A learnable toy task: each class is a fixed random 3x8x8 image, samples add Gaussian noise."""
    protos = torch.randn(10, 3, 8, 8, generator=torch.Generator().manual_seed(0))

    def make(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 10, (n,), generator=g)
        return protos[y] + noise * torch.randn(n, 3, 8, 8, generator=g), y

    (xt, yt), (xv, yv) = make(n_train, 1), make(n_val, 2)
    return TensorBatches(xt, yt, batch_size, seed=0), TensorBatches(xv, yv, 64, shuffle=False)


@lru_cache(maxsize=1)
def trained_toy_run():
    """Train the shallow space's supernet with `uniform` for 50 steps, once per test process.

    Returns (space, supernet, train, val, per-step losses, final metrics). Shared by the trainer and
    evaluator tests, which must not modify it (the evaluator tests check they do not)."""
    import tempfile

    from flexnas.train import TrainConfig, Trainer

    space = shallow_space()
    torch.manual_seed(0)
    supernet = space.supernet()
    train, val = prototype_split()
    losses: list[float] = []
    cfg = TrainConfig(epochs=5, lr=0.2, label_smoothing=0.0)
    with one_thread(), tempfile.TemporaryDirectory() as run_dir:
        final = Trainer(space, supernet, train, cfg, run_dir, "cpu", seed=0, progress=False,
                        callbacks=[lambda t: losses.append(float(t.last_metrics["loss"]))]).fit()
    return space, supernet, train, val, losses, final
