"""Every on-disk format, from tiny files the tests write, plus the real CIFAR-10 folder when present."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from .data_helpers import collect, file_ordered_test_split, to_uint8, write_cifar10, write_imagefolder, write_npz
from flexnas.data import DataConfig, build_data

CIFAR10_DIR = Path(__file__).resolve().parents[2].parent / "shared/data/cifar10"


@pytest.mark.parametrize("channels", [0, 3])
def test_npz_round_trip_with_test_split(tmp_path: Path, channels: int) -> None:
    arrays = write_npz(tmp_path / "d.npz", n=40, channels=channels, test=10)
    bundle = build_data(DataConfig(name="npz", root=str(tmp_path / "d.npz"), batch_size=8))
    c = max(channels, 1)
    assert (bundle.channels, bundle.input_size, bundle.num_classes) == (c, 8, 4)
    x_test, y_test = file_ordered_test_split(bundle)
    expected = arrays["x_test"].reshape(10, 8, 8, c).transpose(0, 3, 1, 2)
    assert torch.equal(to_uint8(x_test, bundle), torch.from_numpy(expected))
    assert y_test.tolist() == arrays["y_test"].tolist()
    assert bundle.train.num_images + bundle.val.num_images == 40


def test_npz_without_test_split_holds_out_a_fixed_fifth(tmp_path: Path) -> None:
    arrays = write_npz(tmp_path / "d.npz", n=50, channels=1, classes=5)
    a = build_data(DataConfig(name="npz", root=str(tmp_path / "d.npz"), batch_size=4, seed=0))
    b = build_data(DataConfig(name="npz", root=str(tmp_path / "d.npz"), batch_size=4, seed=3))
    assert a.test.num_images == 10 and a.train.num_images + a.val.num_images == 40
    test_a, test_b = collect(a.test), collect(b.test)
    assert torch.equal(test_a[1], test_b[1])                     # the test split ignores the run seed
    assert torch.bincount(test_a[1]).tolist() == [2] * 5
    rows = {img.tobytes() for img in arrays["x"]}
    assert all(img.numpy().tobytes() in rows for img in to_uint8(test_a[0], a)[:, 0])


def test_npz_class_names_and_resize(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8),
             y=np.arange(20) % 2, class_names=np.array(["no", "yes"]))
    bundle = build_data(DataConfig(name="npz", root=str(tmp_path / "d.npz"), batch_size=4, resize=8))
    assert bundle.class_names == ["no", "yes"] and bundle.input_size == 8
    assert next(iter(bundle.train.epoch(0)))[0].shape == (4, 3, 8, 8)


@pytest.mark.parametrize("point_at_folder", [False, True])
def test_cifar10_pickles(tmp_path: Path, point_at_folder: bool) -> None:
    fake = write_cifar10(tmp_path)
    root = tmp_path / "cifar-10-batches-py" if point_at_folder else tmp_path
    bundle = build_data(DataConfig(name="cifar10", root=str(root), batch_size=10))
    assert (bundle.channels, bundle.input_size, bundle.num_classes) == (3, 32, 10)
    assert bundle.class_names[:3] == ["airplane", "automobile", "bird"]
    assert bundle.train.num_images + bundle.val.num_images == 100
    x_test, y_test = file_ordered_test_split(bundle)
    assert torch.equal(to_uint8(x_test, bundle), torch.from_numpy(fake["test_x"]))
    assert y_test.tolist() == fake["test_y"].tolist()
    assert bundle.train.augment.flip is True and bundle.train.augment.pad == 4
    expected_mean = fake["train_x"].reshape(100, 3, -1).mean(axis=(0, 2)) / 255
    assert np.allclose(bundle.mean, expected_mean, atol=1e-6)


def test_cifar100_pickles(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 60), ("test", 20)):
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"fine_labels": [i % 100 for i in range(n)],
                         b"coarse_labels": [0] * n}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f)
    bundle = build_data(DataConfig(name="cifar100", root=str(tmp_path), batch_size=8, train_portion=1.0))
    assert bundle.num_classes == 100 and bundle.class_names[7] == "c7"
    assert file_ordered_test_split(bundle)[1].tolist() == list(range(20))


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_imagefolder_png_tree(tmp_path: Path, mode: str) -> None:
    written = write_imagefolder(tmp_path, mode=mode)
    bundle = build_data(DataConfig(name="imagefolder", root=str(tmp_path), batch_size=4))
    channels = 3 if mode == "RGB" else 1
    assert (bundle.channels, bundle.input_size, bundle.num_classes) == (channels, 8, 3)
    assert bundle.class_names == ["cat", "dog", "fox"]
    x_test, y_test = file_ordered_test_split(bundle)
    expected = np.stack(written["test"]).reshape(9, 8, 8, channels).transpose(0, 3, 1, 2)
    assert torch.equal(to_uint8(x_test, bundle), torch.from_numpy(expected))
    assert y_test.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_imagefolder_accepts_val_and_resizes(tmp_path: Path) -> None:
    write_imagefolder(tmp_path, size=12, test_dir="val")
    bundle = build_data(DataConfig(name="imagefolder", root=str(tmp_path), resize=6, batch_size=4))
    assert bundle.input_size == 6 and bundle.test.num_images == 9
    assert collect(bundle.test)[0].shape == (9, 3, 6, 6)


@pytest.mark.parametrize("workers", [0, 1])
def test_stream_mode_matches_in_memory(tmp_path: Path, workers: int) -> None:
    write_imagefolder(tmp_path, train=10)
    cfg = dict(name="imagefolder", root=str(tmp_path), batch_size=4, eval_batch_size=5, workers=workers)
    memory = build_data(DataConfig(**cfg, stream=False))
    stream = build_data(DataConfig(**cfg, stream=True))
    assert stream.stream and not memory.stream
    for name in ("train", "val", "test", "train_eval"):
        a, b = getattr(memory, name), getattr(stream, name)
        assert len(a) == len(b)
        for epoch in (0, 1):
            for (xa, ya), (xb, yb) in zip(a.epoch(epoch, 1), b.epoch(epoch, 1), strict=True):
                assert torch.equal(ya, yb)
                # mean/std: exact in memory, from a sample when streaming (here the whole split)
                assert torch.allclose(xa, xb, atol=1e-4)


@pytest.mark.skipif(not CIFAR10_DIR.is_dir(), reason=f"real CIFAR-10 folder absent: {CIFAR10_DIR}")
def test_real_cifar10_folder(tmp_path: Path) -> None:
    cfg = DataConfig(name="imagefolder", root=str(CIFAR10_DIR), max_train=500, max_test=200, batch_size=50)
    bundle = build_data(cfg, cache_dir=tmp_path)
    assert (bundle.channels, bundle.input_size, bundle.num_classes) == (3, 32, 10)
    assert bundle.class_names[0] == "airplane" and bundle.class_names[-1] == "truck"
    assert bundle.train.num_images + bundle.val.num_images == 500 and bundle.test.num_images == 200
    y_test = collect(bundle.test)[1]
    assert torch.bincount(y_test).tolist() == [20] * 10
    x, y = collect(bundle.train_eval)
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05   # normalised by train stats
    assert 0.4 < bundle.mean[0] < 0.55                                        # CIFAR's red mean is ~0.49


def test_eval_streams_mix_classes_from_a_class_sorted_folder(tmp_path: Path) -> None:
    """A folder dataset lists its files class by class; BN recalibration reads the first batches of
    train_eval, so every eval stream must start class-mixed (and stay the same from build to build)."""
    write_imagefolder(tmp_path, train=20, test=10)
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), batch_size=4, eval_batch_size=12)
    bundle = build_data(cfg)
    for name in ("train_eval", "val", "test"):
        first_labels = next(iter(getattr(bundle, name).epoch(0)))[1]
        assert len(torch.unique(first_labels)) == 3, (name, first_labels.tolist())
    again = build_data(cfg)
    for name in ("train_eval", "val", "test"):
        assert torch.equal(collect(getattr(bundle, name))[1], collect(getattr(again, name))[1])
