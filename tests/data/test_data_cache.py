"""The decoded-tensor cache: written once, reused on the next build, keyed by what changes the pixels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from .data_helpers import collect, write_imagefolder
from flexnas.data import DataConfig, build_data
from flexnas.data.sources import FileSet


def _cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(name="imagefolder", root=str(root), batch_size=4, **kw)


def test_second_build_reuses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_imagefolder(tmp_path / "imgs")
    cache = tmp_path / "run"
    first = build_data(_cfg(tmp_path / "imgs"), cache_dir=cache)
    files = list(cache.glob("data-imagefolder-images-*.pt"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns

    def no_decoding(self, workers=0):
        raise AssertionError("decoded again although the cache holds the images")

    monkeypatch.setattr(FileSet, "decode_all", no_decoding)
    second = build_data(_cfg(tmp_path / "imgs"), cache_dir=cache)
    assert files[0].stat().st_mtime_ns == mtime
    for a, b in zip(collect(first.test), collect(second.test)):
        assert torch.equal(a, b)
    assert first.mean == second.mean

    # a different train_portion / seed reuses the same decoded images ...
    build_data(_cfg(tmp_path / "imgs", train_portion=0.5, seed=4), cache_dir=cache)
    # ... while max_train or resize change the pixels, so they need (and would decode) a new entry
    with pytest.raises(AssertionError, match="decoded again"):
        build_data(_cfg(tmp_path / "imgs", max_train=12), cache_dir=cache)
    assert len(list(cache.glob("*.pt"))) == 1


def test_corrupt_cache_is_rebuilt(tmp_path: Path) -> None:
    write_imagefolder(tmp_path / "imgs")
    cache = tmp_path / "run"
    build_data(_cfg(tmp_path / "imgs"), cache_dir=cache)
    (path,) = cache.glob("*.pt")
    path.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable data cache"):
        bundle = build_data(_cfg(tmp_path / "imgs"), cache_dir=cache)
    assert bundle.test.num_images == 9 and path.stat().st_size > 100


def test_no_cache_dir_writes_nothing(tmp_path: Path) -> None:
    write_imagefolder(tmp_path / "imgs")
    build_data(_cfg(tmp_path / "imgs"))
    assert not list(tmp_path.rglob("*.pt"))


def test_stream_mode_caches_only_stats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_imagefolder(tmp_path / "imgs")
    cache = tmp_path / "run"
    first = build_data(_cfg(tmp_path / "imgs", stream=True, workers=0), cache_dir=cache)
    assert [p.name.split("-")[2] for p in cache.glob("*.pt")] == ["stats"]
    calls = []
    original = FileSet.decode_all
    monkeypatch.setattr(FileSet, "decode_all", lambda self, w=0: calls.append(1) or original(self, w))
    second = build_data(_cfg(tmp_path / "imgs", stream=True, workers=0), cache_dir=cache)
    assert calls == [] and first.mean == second.mean


def test_adding_images_invalidates_the_cache(tmp_path: Path) -> None:
    write_imagefolder(tmp_path / "imgs")
    cache = tmp_path / "run"
    build_data(_cfg(tmp_path / "imgs"), cache_dir=cache)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imgs" / "test" / "cat" / "new.png")
    bundle = build_data(_cfg(tmp_path / "imgs"), cache_dir=cache)
    assert bundle.test.num_images == 10 and len(list(cache.glob("*.pt"))) == 2
