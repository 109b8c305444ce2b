"""The embedded digits set end to end: shapes, splits, determinism, augmentation and sharding."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from .data_helpers import collect, to_uint8
from flexnas.data import Batches, DataConfig, DataError, build_data


@pytest.fixture(scope="module")
def digits():
    return build_data(DataConfig(name="digits", batch_size=64, eval_batch_size=100))


def _rows(images: torch.Tensor) -> set[bytes]:
    return {bytes(img.numpy().tobytes()) for img in images}


def test_shapes_and_classes(digits) -> None:
    assert (digits.num_classes, digits.channels, digits.input_size) == (10, 1, 8)
    assert digits.class_names == [str(i) for i in range(10)]
    for batches in (digits.train, digits.val, digits.test, digits.train_eval):
        assert isinstance(batches, Batches)
        x, y = next(iter(batches.epoch(0)))
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (1, 8, 8) and len(x) == len(y)
        assert int(y.min()) >= 0 and int(y.max()) < 10


def test_split_sizes_and_partial_batches(digits) -> None:
    n_train, n_val, n_test = digits.train.num_images, digits.val.num_images, digits.test.num_images
    assert n_train + n_val + n_test == 1797
    assert abs(n_test - 0.2 * 1797) <= 10                 # stratified 20% hold-out
    assert abs(n_train - 0.8 * (n_train + n_val)) <= 10   # train_portion of the train split
    assert len(digits.train) == n_train // 64             # train drops the last partial batch
    sizes = [len(y) for _, y in digits.train.epoch(0)]
    assert sizes == [64] * len(digits.train)
    _, y_test = collect(digits.test)                       # eval keeps it
    assert len(y_test) == n_test and len(digits.test) == -(-n_test // 100)
    for batches in (digits.val, digits.test):
        assert set(collect(batches)[1].tolist()) == set(range(10))   # every class in every split


def test_splits_partition_the_images(digits) -> None:
    fit = to_uint8(collect(digits.train_eval)[0], digits)
    val = to_uint8(collect(digits.val)[0], digits)
    test = to_uint8(collect(digits.test)[0], digits)
    fit_rows, val_rows, test_rows = _rows(fit), _rows(val), _rows(test)
    assert len(fit_rows) == len(fit) and len(val_rows) == len(val)   # digits images are all distinct
    assert not fit_rows & val_rows and not fit_rows & test_rows and not val_rows & test_rows
    raw = np.rint(load_digits().images * (255 / 16)).astype(np.uint8)[:, None]
    assert fit_rows | val_rows | test_rows == _rows(torch.from_numpy(raw))


def test_train_eval_holds_the_train_images() -> None:
    bundle = build_data(DataConfig(name="digits", augment=False, batch_size=50))
    trained = _rows(to_uint8(collect(bundle.train, 3)[0], bundle))
    fit = _rows(to_uint8(collect(bundle.train_eval)[0], bundle))
    assert trained <= fit and len(fit) - len(trained) == bundle.train.num_images % 50


def test_same_seed_and_epoch_gives_identical_batches(digits) -> None:
    again = build_data(DataConfig(name="digits", batch_size=64, eval_batch_size=100))
    for epoch in (0, 3):
        for (xa, ya), (xb, yb) in zip(digits.train.epoch(epoch), again.train.epoch(epoch), strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_epoch_does_not_depend_on_history(digits) -> None:
    direct = collect(digits.train, 2)
    for epoch in (0, 1, 0):
        collect(digits.train, epoch)
    assert all(torch.equal(a, b) for a, b in zip(direct, collect(digits.train, 2)))


def test_different_epochs_and_seeds_differ(digits) -> None:
    y0, y1 = collect(digits.train, 0)[1], collect(digits.train, 1)[1]
    assert not torch.equal(y0, y1)
    other = build_data(DataConfig(name="digits", seed=1))
    assert not torch.equal(next(iter(other.train.epoch(0)))[1], y0[:64])


@pytest.mark.parametrize("start", [0, 1, 5, 17])
def test_start_skips_to_the_tail(digits, start: int) -> None:
    full = list(digits.train.epoch(4))
    tail = list(digits.train.epoch(4, start=start))
    assert len(tail) == len(full) - start
    for (xa, ya), (xb, yb) in zip(full[start:], tail, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    eval_tail = list(digits.test.epoch(0, start=min(start, len(digits.test))))
    assert len(eval_tail) == len(digits.test) - min(start, len(digits.test))


def test_eval_batches_are_fixed_and_unaugmented(digits) -> None:
    a, b = collect(digits.val, 0), collect(digits.val, 9)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    fit_a, fit_b = collect(digits.train_eval, 0), collect(digits.train_eval, 7)
    assert torch.equal(fit_a[0], fit_b[0])


def test_augmentation_changes_images_not_labels() -> None:
    plain = build_data(DataConfig(name="digits", augment=False))
    aug = build_data(DataConfig(name="digits", augment=True))
    (xp, yp), (xa, ya) = collect(plain.train, 0), collect(aug.train, 0)
    assert torch.equal(yp, ya)                                # same order: augmentation only moves pixels
    changed = (to_uint8(xp, plain) != to_uint8(xa, aug)).flatten(1).any(1)
    assert 0.5 < changed.float().mean() < 1.0                 # most images shifted; (0, 0) offsets stay put
    assert aug.train.augment.flip is False and aug.train.augment.pad == 1   # digits are not flip-invariant
    flipped = build_data(DataConfig(name="digits", flip=True))
    assert flipped.train.augment.flip is True


def test_augmented_labels_stay_aligned(id_npz) -> None:
    bundle = build_data(DataConfig(name="npz", root=str(id_npz), batch_size=16, flip=True, crop_pad=2,
                                   train_portion=1.0))
    for epoch in range(3):
        for x, y in bundle.train.epoch(epoch):
            ids = to_uint8(x, bundle).flatten(1).max(1).values.long()   # padding is 0, the image is id
            assert torch.equal((ids - 1) % 4, y)


def test_rank_shards_are_disjoint_and_equal(id_npz) -> None:
    cfg = DataConfig(name="npz", root=str(id_npz), batch_size=8, augment=False, train_portion=1.0)
    shards = [build_data(cfg, rank=r, world_size=3) for r in range(3)]
    assert len({len(s.train) for s in shards}) == 1 and len(shards[0].train) == 96 // 3 // 8
    for epoch in (0, 1):
        ids = [to_uint8(collect(s.train, epoch)[0], s)[:, 0, 0, 0].tolist() for s in shards]
        assert all(len(i) == 32 for i in ids)
        assert len(set(ids[0]) | set(ids[1]) | set(ids[2])) == 96   # disjoint and covering
    single = build_data(cfg)
    assert len(single.train) == 96 // 8


def test_train_portion_one_leaves_no_val(id_npz) -> None:
    bundle = build_data(DataConfig(name="npz", root=str(id_npz), batch_size=8, train_portion=1.0))
    assert len(bundle.val) == 0 and bundle.train.num_images == 96
    with pytest.raises(DataError, match="train_portion < 1"):
        for _ in bundle.val.epoch(0):
            pass


def test_max_train_takes_a_balanced_subset() -> None:
    bundle = build_data(DataConfig(name="digits", max_train=200, max_test=50, batch_size=16))
    y_all = torch.cat([collect(bundle.train_eval)[1], collect(bundle.val)[1]])
    assert len(y_all) == 200 and len(collect(bundle.test)[1]) == 50
    assert torch.bincount(y_all, minlength=10).tolist() == [20] * 10
