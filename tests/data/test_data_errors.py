"""Mistakes a user can make with data raise DataError naming the path and the fix."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .data_helpers import write_cifar10, write_imagefolder
from flexnas.data import DataConfig, DataError, build_data
from flexnas.errors import FlexnasError


def _build(**kw):
    return build_data(DataConfig(**kw))


def test_data_error_is_a_flexnas_error() -> None:
    assert issubclass(DataError, FlexnasError)


def test_unknown_dataset_suggests_the_closest() -> None:
    with pytest.raises(DataError, match=r"unknown dataset 'cifar'.*did you mean 'cifar10'"):
        _build(name="cifar")


@pytest.mark.parametrize("name", ["imagefolder", "cifar10", "cifar100", "npz"])
def test_missing_root(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataError, match="data.root is required"):
        _build(name=name)
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"{missing}.*does not exist"):
        _build(name=name, root=str(missing))


def test_imagefolder_missing_split(tmp_path: Path) -> None:
    write_imagefolder(tmp_path)
    shutil.rmtree(tmp_path / "test")
    with pytest.raises(DataError, match=r"no test/ \(or val/\) subfolder"):
        _build(name="imagefolder", root=str(tmp_path))
    shutil.rmtree(tmp_path / "train")
    with pytest.raises(DataError, match="no train/ subfolder"):
        _build(name="imagefolder", root=str(tmp_path))


def test_imagefolder_empty_class_folder(tmp_path: Path) -> None:
    write_imagefolder(tmp_path)
    (tmp_path / "train" / "zebra").mkdir()
    with pytest.raises(DataError, match=r"train/zebra holds no images"):
        _build(name="imagefolder", root=str(tmp_path))


def test_imagefolder_no_class_folders(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    with pytest.raises(DataError, match="has no class folders"):
        _build(name="imagefolder", root=str(tmp_path))


def test_imagefolder_unknown_test_class(tmp_path: Path) -> None:
    write_imagefolder(tmp_path)
    shutil.move(tmp_path / "test" / "fox", tmp_path / "test" / "wolf")
    with pytest.raises(DataError, match="test/wolf has no counterpart"):
        _build(name="imagefolder", root=str(tmp_path))


@pytest.mark.parametrize("stream", [False, True])
def test_imagefolder_mixed_sizes_and_corrupt_files(tmp_path: Path, stream: bool) -> None:
    write_imagefolder(tmp_path)
    odd = tmp_path / "test" / "dog" / "999.png"
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(odd)
    with pytest.raises(DataError, match=f"{odd} is 5x5.*set data.resize"):
        bundle = _build(name="imagefolder", root=str(tmp_path), stream=stream, workers=0, batch_size=4)
        list(bundle.test.epoch(0))
    odd.write_bytes(b"garbage")
    with pytest.raises(DataError, match=f"cannot decode image {odd}"):
        bundle = _build(name="imagefolder", root=str(tmp_path), stream=stream, workers=0, batch_size=4)
        list(bundle.test.epoch(0))


def test_imagefolder_non_square_needs_resize(tmp_path: Path) -> None:
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.fromarray(np.zeros((6, 10, 3), np.uint8)).save(tmp_path / split / "a" / "0.png")
    with pytest.raises(DataError, match="not square; set data.resize"):
        _build(name="imagefolder", root=str(tmp_path))
    bundle = _build(name="imagefolder", root=str(tmp_path), resize=4, batch_size=1)
    assert bundle.input_size == 4


@pytest.mark.parametrize("arrays, message", [
    ({"y": np.zeros(3, int)}, "has no array 'x'"),
    ({"x": np.zeros((3, 4, 4), np.uint8)}, "has no array 'y'"),
    ({"x": np.zeros((3, 4, 4), np.uint8), "y": np.zeros(2, int)}, "has 2 labels but the images have 3"),
    ({"x": np.zeros((3, 4, 4), np.float32), "y": np.zeros(3, int)}, "store uint8 pixels"),
    ({"x": np.zeros((3, 3, 4, 4), np.uint8), "y": np.zeros(3, int)}, r"channels-last"),
    ({"x": np.zeros((3, 4, 4), np.uint8), "y": -np.ones(3, int)}, "non-negative integer"),
    ({"x": np.zeros((3, 4, 4), np.uint8), "y": np.zeros(3, int), "x_test": np.zeros((1, 4, 4), np.uint8)},
     "only one of 'x_test' / 'y_test'"),
    ({"x": np.zeros((3, 4, 4), np.uint8), "y": np.zeros(3, int), "x_test": np.zeros((1, 5, 5), np.uint8),
      "y_test": np.zeros(1, int)}, "save both splits at one shape"),
])
def test_malformed_npz(tmp_path: Path, arrays: dict, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as info:
        _build(name="npz", root=str(path), batch_size=1)
    assert str(path) in str(info.value)


def test_npz_that_is_not_an_npz(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    path.write_text("hello")
    with pytest.raises(DataError, match="cannot read .* as .npz"):
        _build(name="npz", root=str(path))


def test_cifar_root_without_batches(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no cifar-10-batches-py/data_batch_1 under"):
        _build(name="cifar10", root=str(tmp_path))
    (tmp_path / "cifar-100-python").mkdir()
    with pytest.raises(DataError, match=r"no cifar-100-python/train under"):
        _build(name="cifar100", root=str(tmp_path))


def test_cifar_missing_test_batch(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataError, match="missing CIFAR batch file .*test_batch"):
        _build(name="cifar10", root=str(tmp_path))


@pytest.mark.parametrize("kw, message", [
    ({"train_portion": 0.0}, "train_portion"),
    ({"train_portion": 1.5}, "train_portion"),
    ({"batch_size": 0}, "batch_size"),
    ({"max_train": 0}, "max_train"),
    ({"resize": -1}, "resize"),
    ({"crop_pad": -1}, "crop_pad"),
    ({"workers": -1}, "workers"),
    ({"batch_size": 5000}, "fewer than one batch"),
])
def test_bad_values(kw: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        _build(name="digits", **kw)


def test_bad_rank() -> None:
    with pytest.raises(DataError, match="rank=2"):
        build_data(DataConfig(), rank=2, world_size=2)
