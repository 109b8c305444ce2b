"""The building blocks: class-balanced subsets, stratified splits, seeds and the batched augmentation."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flexnas.data.augment import Normalizer, channel_stats, pad_crop_flip, resize_uint8
from flexnas.data.split import balanced_subset, generator, mix_seed, stratified_split


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=80), st.integers(1, 100))
def test_balanced_subset(labels: list[int], n: int) -> None:
    y = torch.tensor(labels)
    chosen = balanced_subset(y, n)
    assert len(chosen) == min(n, len(y)) and len(set(chosen.tolist())) == len(chosen)
    assert torch.equal(chosen, torch.sort(chosen).values)
    counts = torch.bincount(y[chosen], minlength=6)
    available = torch.bincount(y, minlength=6)
    # a class below the largest count must have run out of samples
    top = int(counts.max())
    assert all(c >= top - 1 or c == a for c, a in zip(counts.tolist(), available.tolist()))
    assert torch.equal(chosen, balanced_subset(y, n))
    for cls in range(6):                                  # within a class, file order is kept
        members = torch.nonzero(y == cls).flatten()
        assert torch.equal(members[:int(counts[cls])], chosen[y[chosen] == cls])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=60), st.floats(0.05, 1.0), st.integers(0, 9))
def test_stratified_split(labels: list[int], fraction: float, seed: int) -> None:
    y = torch.tensor(labels)
    first, rest = stratified_split(y, fraction, generator(seed))
    assert sorted(first.tolist() + rest.tolist()) == list(range(len(y)))
    for cls in set(labels):
        n = labels.count(cls)
        assert int((y[first] == cls).sum()) == int(round(n * fraction))
    again = stratified_split(y, fraction, generator(seed))
    assert torch.equal(first, again[0]) and torch.equal(rest, again[1])


def test_mix_seed_separates_streams() -> None:
    seeds = {mix_seed(s, e, b) for s in range(3) for e in range(5) for b in range(20)}
    assert len(seeds) == 300 and all(0 <= s < 2 ** 63 for s in seeds)
    assert mix_seed(1, 2) != mix_seed(2, 1) and mix_seed(1, 2) != mix_seed(1, 2, 0)


def _candidates(image: torch.Tensor, pad: int) -> list[torch.Tensor]:
    c, h, w = image.shape
    padded = torch.nn.functional.pad(image, (pad, pad, pad, pad))
    crops = [padded[:, i:i + h, j:j + w] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]
    return crops + [crop.flip(2) for crop in crops]


def test_pad_crop_flip_outputs_a_shifted_or_flipped_copy() -> None:
    images = torch.randint(0, 256, (32, 3, 6, 6), dtype=torch.uint8, generator=generator(1))
    out = pad_crop_flip(images, 2, True, generator(2))
    assert out.shape == images.shape and out.dtype == torch.uint8
    for src, dst in zip(images, out):
        assert any(torch.equal(dst, cand) for cand in _candidates(src, 2))
    assert torch.equal(out, pad_crop_flip(images, 2, True, generator(2)))
    assert not torch.equal(out, pad_crop_flip(images, 2, True, generator(3)))
    flips = [torch.equal(d, s.flip(2)) for s, d in zip(images, pad_crop_flip(images, 0, True, generator(4)))]
    assert 4 < sum(flips) < 28
    assert torch.equal(pad_crop_flip(images, 0, False, generator(5)), images)


def test_normalizer_and_stats() -> None:
    images = torch.randint(0, 256, (50, 3, 4, 4), dtype=torch.uint8, generator=generator(0))
    mean, std = channel_stats(images, chunk=7)
    ref = images.double() / 255
    assert torch.allclose(torch.tensor(mean, dtype=torch.float64), ref.mean(dim=(0, 2, 3)))
    assert torch.allclose(torch.tensor(std, dtype=torch.float64), ref.std(dim=(0, 2, 3), unbiased=False))
    out = Normalizer(mean, std)(images)
    assert out.dtype == torch.float32
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(out.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)


def test_resize_uint8() -> None:
    images = torch.full((2, 1, 8, 8), 200, dtype=torch.uint8)
    small = resize_uint8(images, 4)
    assert small.shape == (2, 1, 4, 4) and small.dtype == torch.uint8 and bool((small == 200).all())
    assert resize_uint8(images, 8) is images
