"""Atomic writes and clear refusals of bad checkpoints."""
from __future__ import annotations

import pytest
import torch

from flexnas.errors import CheckpointError
from flexnas.train.checkpoint import FORMAT_VERSION, check_meta, load_checkpoint, save_checkpoint

META = {"space": {"name": "proxyless", "width_mult": 0.25}, "strategy": "uniform", "world_size": 1,
        "flexnas_version": "0.1.0", "config_hash": "abc", "config": {"lr": 0.05, "epochs": 10}}


def state(value: float = 1.0) -> dict:
    return {"meta": META, "weights": torch.full((3,), value), "epoch": 2}


def test_round_trip_and_no_temp_files(tmp_path):
    path = save_checkpoint(tmp_path / "checkpoint.pt", state())
    loaded = load_checkpoint(path, expected_meta=META)
    assert torch.equal(loaded["weights"], torch.ones(3)) and loaded["epoch"] == 2
    assert loaded["format_version"] == FORMAT_VERSION
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_failed_write_keeps_the_previous_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "checkpoint.pt", state(1.0))
    with pytest.raises(Exception):
        save_checkpoint(path, {**state(2.0), "unpicklable": lambda: None})
    assert torch.equal(load_checkpoint(path)["weights"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_file_raises_checkpoint_error(tmp_path, damage):
    path = save_checkpoint(tmp_path / "checkpoint.pt", state())
    blob = path.read_bytes()
    path.write_bytes({"truncate": blob[: len(blob) // 3], "garbage": b"not a checkpoint" * 10, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=r"checkpoint .*checkpoint\.pt is corrupt or truncated: .*; "
                                              r"delete it to start over"):
        load_checkpoint(path)


def test_foreign_file_without_meta_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"weights": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match="no 'meta' record"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "checkpoint.pt")


@pytest.mark.parametrize("field, change", [
    ("space.width_mult", {"space": {"name": "proxyless", "width_mult": 0.5}}),
    ("space.name", {"space": {"name": "fbnet", "width_mult": 0.25}}),
    ("strategy", {"strategy": "fair"}),
    ("world_size", {"world_size": 8}),
    ("config.lr", {"config": {"lr": 0.1, "epochs": 10}, "config_hash": "def"}),
])
def test_mismatch_names_the_field(field, change):
    with pytest.raises(CheckpointError, match=rf"{field.replace('.', '[.]')}: checkpoint has") as err:
        check_meta(META, {**META, **change})
    assert str(err.value).count("checkpoint has") == 1


def test_version_difference_only_warns():
    with pytest.warns(UserWarning, match="flexnas_version"):
        check_meta(META, {**META, "flexnas_version": "9.9.9"})


def test_hash_compared_when_config_fields_are_absent():
    bare = {k: v for k, v in META.items() if k != "config"}
    with pytest.raises(CheckpointError, match="config_hash"):
        check_meta(bare, {**bare, "config_hash": "zzz"})
