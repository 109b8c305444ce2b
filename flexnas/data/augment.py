"""Batched augmentation and normalisation on uint8 image tensors, on whatever device they live on."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 (N, C, H, W) batch to size x size (antialiased bilinear, rounded back to uint8)."""
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True,
                        align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def pad_crop_flip(images: torch.Tensor, pad: int, flip: bool, gen: torch.Generator,
                  part: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """Random pad-`pad` crop (zero padding) and optional horizontal flip of a uint8 (B, C, H, W) batch.

    With `part=(r, n)` the batch is the r-th of n equal parts of a global batch (rank r of n): the
    randoms are drawn for all n*B images and the r-th slice is used, as if augmenting the global batch.

    The random offsets and flips are drawn on the CPU from `gen` (a few bytes, so results do not
    depend on the device) and folded into one gather index: crop and flip together cost a single
    pass over the batch on its own device, with no Python loop over images.
    """
    b, c, h, w = images.shape
    if b == 0 or (pad == 0 and not flip):
        return images
    r, n = part
    offsets = torch.randint(0, 2 * pad + 1, (b * n, 2), generator=gen)[r * b:(r + 1) * b]
    mirror = (torch.rand(b * n, generator=gen)[r * b:(r + 1) * b] < 0.5 if flip
              else torch.zeros(b, dtype=torch.bool))
    device = images.device
    offsets, mirror = offsets.to(device), mirror.to(device)
    cols = torch.arange(w, device=device)
    cols = torch.where(mirror[:, None], cols.flip(0), cols) + offsets[:, 1:]     # (B, W)
    rows = torch.arange(h, device=device) + offsets[:, :1]                       # (B, H)
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
    width = w + 2 * pad
    index = (rows[:, :, None] * width + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, -1).gather(2, index).view(b, c, h, w)


def cutout(images: torch.Tensor, length: int, gen: torch.Generator,
           part: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """Cutout (DeVries & Taylor, 2017): zero one `length` x `length` square per image, centred on a
    uniformly drawn pixel and clipped at the border, of a normalised float (B, C, H, W) batch.

    Applied after normalisation as the paper does, so the square is the dataset mean, not black.
    Centres come from `gen` on the CPU (device-independent results); the mask is one broadcast."""
    b, _, h, w = images.shape
    if b == 0 or length <= 0:
        return images
    r, n = part   # as in pad_crop_flip: rank r's slice of the randoms of the n-rank global batch
    centres = torch.stack((torch.randint(0, h, (b * n,), generator=gen)[r * b:(r + 1) * b],
                           torch.randint(0, w, (b * n,), generator=gen)[r * b:(r + 1) * b]), 1)
    centres = centres.to(images.device)
    rows = torch.arange(h, device=images.device)[None, :] - centres[:, :1]      # (B, H)
    cols = torch.arange(w, device=images.device)[None, :] - centres[:, 1:]      # (B, W)
    lo, hi = -(length // 2), length - length // 2                               # [c - L//2, c + L - L//2)
    inside = ((rows >= lo) & (rows < hi))[:, :, None] & ((cols >= lo) & (cols < hi))[:, None, :]
    return images.masked_fill(inside[:, None], 0.0)


class Normalizer:
    """uint8 -> float32 (x / 255 - mean) / std as one fused multiply-add on the batch's device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(max(float(s), 1e-6) for s in std)
        self._cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        consts = self._cache.get(images.device)
        if consts is None:
            std = torch.tensor(self.std, dtype=torch.float32)
            scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1).to(images.device)
            shift = (-torch.tensor(self.mean, dtype=torch.float32) / std).view(1, -1, 1, 1)
            consts = self._cache[images.device] = (scale, shift.to(images.device))
        scale, shift = consts
        return torch.addcmul(shift, images.float(), scale)


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units of a uint8 (N, C, H, W) tensor, chunked to bound memory."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    count = 0
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk].to(torch.float64).div_(255.0)
        total += part.sum(dim=(0, 2, 3))
        total_sq += part.pow(2).sum(dim=(0, 2, 3))
        count += part.numel() // c
    if count == 0:
        return (0.5,) * c, (0.5,) * c
    mean = total / count
    std = (total_sq / count - mean.pow(2)).clamp_min(0.0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def default_pad(input_size: int, crop_pad: Optional[int]) -> int:
    """CIFAR's pad-4 crop at 32 px, scaled with the image (1 px at 8 px) unless set explicitly."""
    return crop_pad if crop_pad is not None else max(1, input_size // 8)
