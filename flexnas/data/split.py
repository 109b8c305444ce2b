"""Deterministic, class-aware index selection: subsets, hold-outs and seeds."""
from __future__ import annotations

import numpy as np
import torch


def mix_seed(*parts: int) -> int:
    """One well-mixed 63-bit seed from several integers, so (seed, epoch, batch) streams never collide."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts] + [len(parts)])
    return int(state.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded from `parts` (CPU so results do not depend on the training device)."""
    gen = torch.Generator()
    gen.manual_seed(mix_seed(*parts))
    return gen


def balanced_subset(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Sorted indices of `n` samples taken round-robin over classes in file order.

    Class counts differ by at most one unless a class runs out, and the choice does not depend on the
    seed, so runs with different seeds compare on the same reduced data.
    """
    if n >= len(labels):
        return torch.arange(len(labels))
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    starts = torch.searchsorted(sorted_labels, sorted_labels, right=False)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(labels)) - starts      # position of each sample within its class
    key = rank * (int(labels.max()) + 1) + labels          # round 0 of every class, then round 1, ...
    chosen = torch.argsort(key, stable=True)[:n]
    return torch.sort(chosen).values


def stratified_split(labels: torch.Tensor, first_fraction: float,
                     gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, rest) sorted index sets; each class puts round(first_fraction * n_class) in `first`."""
    first: list[torch.Tensor] = []
    rest: list[torch.Tensor] = []
    for cls in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        k = int(round(len(idx) * first_fraction))
        first.append(idx[:k])
        rest.append(idx[k:])
    empty = torch.zeros(0, dtype=torch.long)
    return (torch.sort(torch.cat(first + [empty])).values,
            torch.sort(torch.cat(rest + [empty])).values)
