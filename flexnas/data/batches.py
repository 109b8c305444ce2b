"""Epochs of (images, labels) batches whose order and augmentation depend only on (seed, epoch, batch).

Because nothing carries over from one epoch to the next, a run resumed at (epoch, batch) sees exactly
the batches the uninterrupted run would have seen. Two back ends share the plan and the augmentation:
`TensorBatches` slices uint8 tensors already on the training device; `StreamBatches` decodes through a
DataLoader with workers and augments the uint8 batch after moving it to the device.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional, Protocol, runtime_checkable

import torch
from torch.utils.data import DataLoader

from flexnas.data.augment import Normalizer, cutout, pad_crop_flip
from flexnas.data.sources import ImageSet, raise_item_errors
from flexnas.data.split import generator
from flexnas.errors import DataError

Batch = tuple[torch.Tensor, torch.Tensor]


@runtime_checkable
class Batches(Protocol):
    """What the trainer iterates: a fixed number of batches per epoch, replayable from any batch."""

    def __len__(self) -> int: ...

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Batches of one epoch in a deterministic order given (seed, epoch), skipping the first `start`.

        Train batches are shuffled and augmented (randomness from (seed, epoch, batch index)) and drop
        the last partial batch; eval batches are in fixed order, unaugmented, and keep it.
        """
        ...


@dataclass(frozen=True)
class Augment:
    """Training augmentation: random pad-crop by `pad` pixels, if `flip` horizontal flips, and if
    `cutout` > 0 a zeroed `cutout`-pixel square per image (after normalisation)."""

    pad: int
    flip: bool
    cutout: int = 0


class _Planned:
    """The shared plan: which sample indices form batch b of epoch e on this rank.

    Training batch b of an epoch is one *global* batch of batch_size x world_size images (a slice of
    the epoch's permutation), and rank r takes its r-th part, augmented with the randoms drawn for
    the whole global batch. So N ranks at batch B see exactly the images and augmentations of one
    process at batch N*B (what makes their averaged gradient that process's gradient)."""

    def __init__(self, labels: torch.Tensor, batch_size: int, *, train: bool, seed: int,
                 augment: Optional[Augment], normalize: Normalizer, device: torch.device,
                 rank: int = 0, world_size: int = 1) -> None:
        self.labels = labels
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.augment = augment if train else None
        self.normalize = normalize
        self.device = torch.device(device)
        self.rank = rank if train else 0
        self.world_size = world_size if train else 1
        self.num_images = len(labels)

    def __len__(self) -> int:
        if self.train:
            return self.num_images // (self.batch_size * self.world_size)
        return -(-self.num_images // self.batch_size)

    def order(self, epoch: int) -> Optional[torch.Tensor]:
        """This rank's indices of epoch `epoch`, batch after batch (None for eval: the natural order)."""
        if not self.train:
            return None
        perm = torch.randperm(self.num_images, generator=generator(self.seed, epoch, 0))
        steps, bs = len(self), self.batch_size
        return perm[:steps * bs * self.world_size].view(steps, self.world_size, bs)[:, self.rank].reshape(-1)

    def finish(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, index: int) -> Batch:
        """Move a uint8 batch to the device, augment it there and normalise it to float32."""
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if self.augment is None:
            return self.normalize(images), labels
        gen = generator(self.seed, epoch, 0, index, 1)   # drawn for the global batch, see _Planned
        part = (self.rank, self.world_size)
        images = pad_crop_flip(images, self.augment.pad, self.augment.flip, gen, part)
        # Drawn after the crop's numbers from the same generator: cutout=0 leaves old streams unchanged.
        return cutout(self.normalize(images), self.augment.cutout, gen, part), labels

    @staticmethod
    def check_start(start: int) -> None:
        if start < 0:
            raise ValueError(f"start={start} must be >= 0")


class TensorBatches(_Planned):
    """Batches sliced from uint8 (N, C, H, W) images held on the training device."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, **kwargs) -> None:
        super().__init__(labels, batch_size, **kwargs)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        self.check_start(start)
        return self._iterate(epoch, start)

    def _iterate(self, epoch: int, start: int) -> Iterator[Batch]:
        order = self.order(epoch)
        if order is not None:
            order = order.to(self.device)
        bs = self.batch_size
        for b in range(start, len(self)):
            if order is None:
                xb, yb = self.images[b * bs:(b + 1) * bs], self.labels[b * bs:(b + 1) * bs]
            else:
                idx = order[b * bs:(b + 1) * bs]
                xb, yb = self.images.index_select(0, idx), self.labels.index_select(0, idx)
            yield self.finish(xb, yb, epoch, b)


class _PlanSampler:
    """A batch sampler whose batches are replaced before each epoch (the loader's workers persist)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StreamBatches(_Planned):
    """Batches decoded by DataLoader workers from an ImageSet (files or CPU arrays), then finished on device."""

    def __init__(self, dataset: ImageSet, batch_size: int, workers: int = 2, **kwargs) -> None:
        super().__init__(dataset.labels, batch_size, **kwargs)
        self.dataset = dataset
        self.workers = workers
        self._sampler = _PlanSampler()
        self._loader: Optional[DataLoader] = None

    def _get_loader(self) -> DataLoader:
        if self._loader is None:
            self._loader = DataLoader(self.dataset, batch_sampler=self._sampler, num_workers=self.workers,
                                      persistent_workers=self.workers > 0,
                                      pin_memory=self.device.type == "cuda")
        return self._loader

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        self.check_start(start)
        return self._iterate(epoch, start)

    def _iterate(self, epoch: int, start: int) -> Iterator[Batch]:
        order = self.order(epoch)
        bs = self.batch_size
        if order is None:
            order = torch.arange(self.num_images)
        self._sampler.batches = [order[b * bs:(b + 1) * bs].tolist() for b in range(start, len(self))]
        if not self._sampler.batches:
            return
        for b, (images, labels, errors) in enumerate(self._get_loader(), start=start):
            raise_item_errors(errors)
            yield self.finish(images, labels, epoch, b)


class EmptyBatches:
    """Stands in for a split that does not exist; iterating it explains why and how to get one."""

    def __init__(self, message: str) -> None:
        self.message = message
        self.num_images = 0

    def __len__(self) -> int:
        return 0

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        raise DataError(self.message)
