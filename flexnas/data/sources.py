"""Where images come from: each source yields train and test `ImageSet`s of uint8 (C, H, W) images.

An `ImageSet` knows its labels without decoding anything, so class-balanced subsets are picked before
the (slow) decode, and it can either decode everything at once (in-memory mode) or one image at a time
inside DataLoader workers (stream mode).
"""
from __future__ import annotations

import os
import pickle
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from flexnas.data.augment import resize_uint8
from flexnas.data.config import DataConfig
from flexnas.data.split import generator, stratified_split
from flexnas.errors import DataError

_TORCHVISION_EXTENSIONS = (".jpg", ".jpeg", ".png")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
HOLDOUT_FRACTION = 0.2          # test share held out of sources that ship no test split
_HOLDOUT_SEED = 0x7E57          # fixed: the test split must not move when the run seed changes

Item = tuple[torch.Tensor, int, str]   # (uint8 image, label, error message or "")


class ImageSet(Dataset, ABC):
    """Labelled images of one split; items are (uint8 (C, S, S) image, label, error-or-empty)."""

    labels: torch.Tensor
    channels: int
    size: int

    def __len__(self) -> int:
        return len(self.labels)

    @abstractmethod
    def __getitem__(self, index: int) -> Item: ...

    @abstractmethod
    def subset(self, indices: torch.Tensor) -> "ImageSet": ...

    @abstractmethod
    def decode_all(self, workers: int = 0) -> torch.Tensor:
        """All images as one uint8 (N, C, S, S) tensor on the CPU."""

    def nbytes(self) -> int:
        return len(self) * self.channels * self.size * self.size


class TensorSet(ImageSet):
    """Images already decoded in memory (digits, CIFAR pickles, npz), optionally resized."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, size: Optional[int] = None) -> None:
        self.images = images
        self.labels = labels
        self.channels = images.shape[1]
        self.size = size if size is not None else images.shape[-1]

    def __getitem__(self, index: int) -> Item:
        return resize_uint8(self.images[index:index + 1], self.size)[0], int(self.labels[index]), ""

    def subset(self, indices: torch.Tensor) -> "TensorSet":
        return TensorSet(self.images[indices], self.labels[indices], self.size)

    def decode_all(self, workers: int = 0) -> torch.Tensor:
        if self.images.shape[-2:] == (self.size, self.size):
            return self.images.contiguous()
        parts = [resize_uint8(self.images[i:i + 1024], self.size) for i in range(0, len(self), 1024)]
        return torch.cat(parts) if parts else self.images.new_zeros((0, self.channels, self.size, self.size))


class FileSet(ImageSet):
    """Image files decoded with PIL on access (in a DataLoader worker when streaming)."""

    def __init__(self, files: list[str], labels: torch.Tensor, mode: str, size: int,
                 resize: bool) -> None:
        self.files = files
        self.labels = labels
        self.mode = mode                  # "L" or "RGB": every image is converted to this
        self.channels = 1 if mode == "L" else 3
        self.size = size
        self.resize = resize
        self._label_list: list[int] = labels.tolist()

    def __getitem__(self, index: int) -> Item:
        path = self.files[index]
        label = self._label_list[index]
        try:
            image = self._decode(path)
        except (OSError, RuntimeError, ValueError) as exc:
            return self._blank(), label, f"cannot decode image {path}: {exc}; delete or replace that file"
        if self.resize:
            image = resize_uint8(image[None], self.size)[0]
        elif image.shape[1:] != (self.size, self.size):
            return self._blank(), label, (
                f"image {path} is {image.shape[2]}x{image.shape[1]} but the first image is "
                f"{self.size}x{self.size}; set data.resize to give all images one size")
        return image, label, ""

    def _blank(self) -> torch.Tensor:
        return torch.zeros((self.channels, self.size, self.size), dtype=torch.uint8)

    def _decode(self, path: str) -> torch.Tensor:
        """uint8 (C, H, W): torchvision's libjpeg/libpng decoder (faster than PIL), PIL for other formats."""
        if path.lower().endswith(_TORCHVISION_EXTENSIONS):
            image = _torchvision_decode(path, self.mode)
            if image is not None:
                return image
        from PIL import Image

        with Image.open(path) as img:
            array = np.array(img.convert(self.mode), dtype=np.uint8)
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    def subset(self, indices: torch.Tensor) -> "FileSet":
        return FileSet([self.files[i] for i in indices.tolist()], self.labels[indices], self.mode,
                       self.size, self.resize)

    def decode_all(self, workers: int = 0) -> torch.Tensor:
        out = torch.empty((len(self), self.channels, self.size, self.size), dtype=torch.uint8)
        loader = DataLoader(self, batch_size=512, shuffle=False,
                            num_workers=workers if len(self) > 2000 else 0)
        pos = 0
        for images, _, errors in loader:
            raise_item_errors(errors)
            out[pos:pos + len(images)] = images
            pos += len(images)
        return out


def _torchvision_decode(path: str, mode: str) -> Optional[torch.Tensor]:
    """torchvision.io's decoder, or None when it is unavailable or rejects the file (PIL then tries).

    torchvision 0.29 deprecates its image codecs in favour of torchcodec; the warning is silenced here
    because the PIL fallback keeps this working once they are removed.
    """
    try:
        from torchvision.io import ImageReadMode, decode_image
    except ImportError:
        return None
    with open(path, "rb") as f:
        data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_image(data, mode=ImageReadMode.GRAY if mode == "L" else ImageReadMode.RGB)
    except (RuntimeError, TypeError, ValueError):
        return None


def raise_item_errors(errors: list[str]) -> None:
    """Re-raise a decode problem found in a worker as one clean DataError in the main process."""
    for message in errors:
        if message:
            raise DataError(message)


@dataclass
class Source:
    """A dataset on disk (or embedded), described well enough to split, cache and batch it."""

    name: str
    train: ImageSet
    test: ImageSet
    class_names: list[str]
    flip_default: bool
    stamp: str           # changes when the files on disk change; part of the cache key

    @property
    def channels(self) -> int:
        return self.train.channels

    @property
    def input_size(self) -> int:
        return self.train.size


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_mtime_ns}|{st.st_size}"


def _holdout(images: torch.Tensor, labels: torch.Tensor,
             size: Optional[int]) -> tuple[TensorSet, TensorSet]:
    keep, hold = stratified_split(labels, 1.0 - HOLDOUT_FRACTION, generator(_HOLDOUT_SEED))
    return TensorSet(images[keep], labels[keep], size), TensorSet(images[hold], labels[hold], size)


def _require_root(cfg: DataConfig, example: str) -> Path:
    if cfg.root is None:
        raise DataError(f"data.root is required for data.name={cfg.name}; e.g. data.root={example}")
    root = Path(cfg.root).expanduser()
    if not root.exists():
        raise DataError(f"data root {root} does not exist; fix data.root (e.g. data.root={example})")
    return root


def load_digits_source(cfg: DataConfig) -> Source:
    """scikit-learn's embedded 8x8 digits (0..16 -> 0..255); a fixed stratified 20% is the test split."""
    import sklearn
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8))[:, None]
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train, test = _holdout(images, labels, cfg.resize)
    return Source("digits", train, test, [str(i) for i in range(10)], flip_default=False,
                  stamp=f"sklearn-{sklearn.__version__}")


def _list_images(folder: Path) -> list[str]:
    return sorted(e.path for e in os.scandir(folder)
                  if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))


def load_imagefolder_source(cfg: DataConfig) -> Source:
    """`root/train/<class>/*.jpg` plus `root/test/<class>` (or `root/val/<class>` when there is no test)."""
    from PIL import Image

    root = _require_root(cfg, "../shared/data/cifar10")
    train_dir = root / "train"
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        missing = "train/" if not train_dir.is_dir() else "test/ (or val/)"
        raise DataError(f"image folder {root} has no {missing} subfolder; expected "
                        f"{root}/train/<class>/*.jpg and {root}/test/<class>/*.jpg")
    class_names = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    if not class_names:
        raise DataError(f"{train_dir} has no class folders; put images in {train_dir}/<class>/")
    index = {name: i for i, name in enumerate(class_names)}

    def scan(split_dir: Path) -> tuple[list[str], torch.Tensor]:
        files: list[str] = []
        labels: list[int] = []
        for entry in sorted(e.name for e in os.scandir(split_dir) if e.is_dir()):
            if entry not in index:
                raise DataError(f"class folder {split_dir / entry} has no counterpart in {train_dir}; "
                                f"rename or remove it (train classes: {', '.join(class_names)})")
            found = _list_images(split_dir / entry)
            if not found:
                raise DataError(f"class folder {split_dir / entry} holds no images "
                                f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder")
            files += found
            labels += [index[entry]] * len(found)
        if not files:
            raise DataError(f"{split_dir} has no class folders with images")
        return files, torch.tensor(labels, dtype=torch.long)

    train_files, train_labels = scan(train_dir)
    test_files, test_labels = scan(test_dir)
    try:
        with Image.open(train_files[0]) as first:
            mode = "L" if first.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
            width, height = first.size
    except OSError as exc:
        raise DataError(f"cannot decode image {train_files[0]}: {exc}; delete or replace that file") from None
    if cfg.resize is None and width != height:
        raise DataError(f"images in {root} are {width}x{height}, not square; set data.resize "
                        f"(e.g. data.resize={min(width, height)})")
    size = cfg.resize if cfg.resize is not None else width
    resize = cfg.resize is not None
    return Source("imagefolder", FileSet(train_files, train_labels, mode, size, resize),
                  FileSet(test_files, test_labels, mode, size, resize), class_names,
                  flip_default=True,
                  stamp=f"{_stamp(train_dir)}|{_stamp(test_dir)}|{len(train_files)}|{len(test_files)}")


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"missing CIFAR batch file {path}; data.root must hold the python version of "
                        "CIFAR as torchvision.datasets.CIFAR10/100 writes it (cifar-10-batches-py/ "
                        "or cifar-100-python/)")
    try:
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="bytes")
    except Exception as exc:  # a corrupt pickle can raise almost anything
        raise DataError(f"cannot read CIFAR batch {path}: {exc}; re-extract the archive") from None
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in data.items()}


def load_cifar_source(cfg: DataConfig) -> Source:
    """CIFAR-10/100 python pickles, with root either the parent of the batch folder or the folder itself."""
    hundred = cfg.name == "cifar100"
    folder_name = "cifar-100-python" if hundred else "cifar-10-batches-py"
    root = _require_root(cfg, f"data/{'cifar100' if hundred else 'cifar10'}")
    folder = root / folder_name if (root / folder_name).is_dir() else root
    first = "train" if hundred else "data_batch_1"
    if not (folder / first).is_file():
        raise DataError(f"no {folder_name}/{first} under {root}; point data.root at the folder that "
                        f"contains {folder_name}/ (as torchvision.datasets.{cfg.name.upper()} writes it)")
    train_files = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    label_key = "fine_labels" if hundred else "labels"

    def read(names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for name in names:
            batch = _unpickle(folder / name)
            if "data" not in batch or label_key not in batch:
                raise DataError(f"CIFAR batch {folder / name} lacks 'data' or '{label_key}'; "
                                f"is data.name={cfg.name} the right dataset?")
            data = np.asarray(batch["data"], dtype=np.uint8)
            labels = np.asarray(batch[label_key], dtype=np.int64)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
                raise DataError(f"CIFAR batch {folder / name} has data {data.shape} and {len(labels)} "
                                "labels; expected (N, 3072) and N labels")
            xs.append(data.reshape(-1, 3, 32, 32))
            ys.append(labels)
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    train_x, train_y = read(train_files)
    test_x, test_y = read(["test"] if hundred else ["test_batch"])
    n_classes = 100 if hundred else 10
    class_names = [str(i) for i in range(n_classes)]
    meta_path = folder / ("meta" if hundred else "batches.meta")
    if meta_path.is_file():
        meta = _unpickle(meta_path)
        names = meta.get("fine_label_names" if hundred else "label_names")
        if names is not None and len(names) == n_classes:
            class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return Source(cfg.name, TensorSet(train_x, train_y, cfg.resize), TensorSet(test_x, test_y, cfg.resize),
                  class_names, flip_default=True, stamp=_stamp(folder / first))


def _npz_images(path: Path, key: str, x: np.ndarray) -> torch.Tensor:
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[3] not in (1, 3)):
        raise DataError(f"{path}: '{key}' has shape {x.shape}; expected (N, H, W) or channels-last "
                        f"(N, H, W, C) (transpose channels-first data with x.transpose(0, 2, 3, 1))")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.integer) or (x.size and (x.min() < 0 or x.max() > 255)):
            raise DataError(f"{path}: '{key}' has dtype {x.dtype}; store uint8 pixels 0..255 "
                            "(e.g. (x * 255).round().astype(np.uint8) for floats in [0, 1])")
        x = x.astype(np.uint8)
    if x.ndim == 3:
        x = x[:, :, :, None]
    if x.shape[1] != x.shape[2]:
        raise DataError(f"{path}: '{key}' images are {x.shape[2]}x{x.shape[1]}, not square; "
                        "crop or pad them to a square before saving")
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _npz_labels(path: Path, key: str, y: np.ndarray, n: int) -> torch.Tensor:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
        raise DataError(f"{path}: '{key}' must be a 1-D array of non-negative integer class ids; "
                        f"got shape {y.shape}, dtype {y.dtype}")
    if len(y) != n:
        raise DataError(f"{path}: '{key}' has {len(y)} labels but the images have {n}; "
                        "save one label per image")
    return torch.from_numpy(y.astype(np.int64))


def load_npz_source(cfg: DataConfig) -> Source:
    """`x` uint8 (N, H, W[, C]) and `y` labels; `x_test`/`y_test` if present, else a fixed 20% hold-out."""
    path = _require_root(cfg, "data/mydata.npz")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path} as .npz: {exc}; save it with numpy.savez(path, x=..., y=...)") \
            from None
    with archive:
        keys = set(archive.files)
        for key in ("x", "y"):
            if key not in keys:
                raise DataError(f"{path} has no array '{key}' (found: {', '.join(sorted(keys)) or 'none'}); "
                                "save it with numpy.savez(path, x=uint8 images, y=int labels)")
        if ("x_test" in keys) != ("y_test" in keys):
            raise DataError(f"{path} has only one of 'x_test' / 'y_test'; save both or neither "
                            "(without them 20% of x is held out as the test split)")
        x = _npz_images(path, "x", archive["x"])
        y = _npz_labels(path, "y", archive["y"], len(x))
        if "x_test" in keys:
            x_test = _npz_images(path, "x_test", archive["x_test"])
            y_test = _npz_labels(path, "y_test", archive["y_test"], len(x_test))
            if x_test.shape[1:] != x.shape[1:]:
                raise DataError(f"{path}: 'x_test' images are {tuple(x_test.shape[1:])} (C, H, W) but 'x' "
                                f"images are {tuple(x.shape[1:])}; save both splits at one shape")
            train, test = TensorSet(x, y, cfg.resize), TensorSet(x_test, y_test, cfg.resize)
        else:
            train, test = _holdout(x, y, cfg.resize)
        n_classes = int(max(int(y.max()) if len(y) else -1, int(test.labels.max()) if len(test) else -1)) + 1
        class_names = [str(i) for i in range(n_classes)]
        if "class_names" in keys:
            names = [str(n) for n in archive["class_names"].tolist()]
            if len(names) < n_classes:
                raise DataError(f"{path}: 'class_names' has {len(names)} names but labels go up to "
                                f"{n_classes - 1}; give one name per class")
            class_names = names
    if len(train) == 0:
        raise DataError(f"{path}: 'x' holds no images")
    return Source("npz", train, test, class_names, flip_default=False, stamp=_stamp(path))


LOADERS = {
    "digits": load_digits_source,
    "imagefolder": load_imagefolder_source,
    "cifar10": load_cifar_source,
    "cifar100": load_cifar_source,
    "npz": load_npz_source,
}


def load_source(cfg: DataConfig) -> Source:
    """The source named by cfg.name (validated beforehand by config.validate)."""
    return LOADERS[cfg.name](cfg)
