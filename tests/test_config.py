from dataclasses import dataclass, field
from typing import Optional

import pytest

from flexnas.config import apply_overrides, from_dict
from flexnas.errors import ConfigError


@dataclass
class Inner:
    lr: float = 0.1
    epochs: int = 3
    targets: list[str] = field(default_factory=list)


@dataclass
class Outer:
    name: str = "x"
    root: Optional[str] = None
    train: Inner = field(default_factory=Inner)


def test_nested_load_and_overrides():
    data = apply_overrides({"train": {"lr": 0.5}}, ["train.epochs=7", "root=/data", "train.targets=[a, b]"])
    cfg = from_dict(Outer, data)
    assert cfg.train == Inner(lr=0.5, epochs=7, targets=["a", "b"]) and cfg.root == "/data"


def test_typo_suggests_the_right_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.eopchs' \(did you mean 'epochs'\?\)"):
        from_dict(Outer, {"train": {"eopchs": 3}})


def test_wrong_types_name_the_key():
    with pytest.raises(ConfigError, match="train.epochs: expected an integer"):
        from_dict(Outer, {"train": {"epochs": "many"}})
    with pytest.raises(ConfigError, match="not of the form"):
        apply_overrides({}, ["train.lr"])
