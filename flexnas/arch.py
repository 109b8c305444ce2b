"""`Arch`: one choice index per choice point of a search space; immutable and hashable."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Arch:
    """A point of a search space. The human-readable form comes from `space.encode(arch)`."""

    space: str
    choices: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", tuple(int(c) for c in self.choices))

    def to_json(self) -> str:
        return json.dumps({"space": self.space, "choices": list(self.choices)})

    @classmethod
    def from_json(cls, text: str | dict[str, Any]) -> "Arch":
        data = json.loads(text) if isinstance(text, str) else text
        return cls(space=str(data["space"]), choices=tuple(data["choices"]))

    def __len__(self) -> int:
        return len(self.choices)
