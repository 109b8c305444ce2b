"""Helpers shared by the data tests: tiny datasets in each on-disk format, and batch collection."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from flexnas.data import DataBundle


def to_uint8(images: torch.Tensor, bundle: DataBundle) -> torch.Tensor:
    """Undo the bundle's normalisation, recovering the stored uint8 pixels exactly."""
    mean = torch.tensor(bundle.mean).view(1, -1, 1, 1)
    std = torch.tensor(bundle.std).view(1, -1, 1, 1)
    return ((images.cpu() * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)


def collect(batches, epoch: int = 0, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*batches.epoch(epoch, start))
    return torch.cat(xs), torch.cat(ys)


def file_ordered_test_split(bundle: DataBundle) -> tuple[torch.Tensor, torch.Tensor]:
    """The test stream's images and labels put back in file order (the stream reads them mixed)."""
    x, y = collect(bundle.test)
    assert bundle.test_order is not None
    back = torch.argsort(bundle.test_order)
    return x[back], y[back]


def write_npz(path: Path, n: int, size: int = 8, channels: int = 0, classes: int = 4,
              test: int = 0, seed: int = 0) -> dict[str, np.ndarray]:
    """Random uint8 images; channels=0 writes (N, H, W), otherwise (N, H, W, C)."""
    rng = np.random.default_rng(seed)
    shape = (size, size) if channels == 0 else (size, size, channels)
    arrays = {"x": rng.integers(0, 256, (n, *shape), dtype=np.uint8),
              "y": np.arange(n) % classes}
    if test:
        arrays["x_test"] = rng.integers(0, 256, (test, *shape), dtype=np.uint8)
        arrays["y_test"] = np.arange(test) % classes
    np.savez(path, **arrays)
    return arrays


def write_cifar10(root: Path, per_batch: int = 20, test: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Fake CIFAR-10 python batches in torchvision's layout (bytes keys, as the real pickles have)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_x, train_y = [], []
    for i in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"fake"}, f)
        train_x.append(data)
        train_y += labels
    test_x = rng.integers(0, 256, (test, 3072), dtype=np.uint8)
    test_y = [i % 10 for i in range(test)]
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": test_x, b"labels": test_y}, f)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship",
             b"truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": per_batch}, f)
    return {"train_x": np.concatenate(train_x).reshape(-1, 3, 32, 32), "train_y": np.array(train_y),
            "test_x": test_x.reshape(-1, 3, 32, 32), "test_y": np.array(test_y)}


def write_imagefolder(root: Path, classes: tuple[str, ...] = ("cat", "dog", "fox"), train: int = 8,
                      test: int = 3, size: int = 8, mode: str = "RGB", seed: int = 0,
                      test_dir: str = "test") -> dict[str, list[np.ndarray]]:
    """A tiny train/<class>/*.png + test/<class>/*.png tree; returns the pixels in file order."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    written: dict[str, list[np.ndarray]] = {"train": [], test_dir: []}
    for split, count in (("train", train), (test_dir, test)):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                shape = (size, size) if mode == "L" else (size, size, 3)
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(pixels, mode=mode).save(root / split / cls / f"{i:03d}.png")
                written[split].append(pixels)
    return written
