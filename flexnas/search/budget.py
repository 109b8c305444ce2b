"""Budget decoding: the most likely arch under per-choice-point log-probabilities whose exact costs lie
inside a window, e.g. [0.95 * target, target] MACs.

A generator's argmax arch can miss its target by a few percent (more when the cross-entropy term is
weighted up and pulls archs toward bigger ops). Decoding within the window keeps the generator's
preferences (where to spend the budget) and makes the budget exact. It uses only the cost model and
the logits, never the supernet, so it stays a cheap decoding step and not a search:

1. start from the argmax arch;
2. while a window is violated, take the single-point change (two-point when no single one helps)
   with the smallest log-probability loss per unit of violation removed (a greedy knapsack step);
3. then, while one exists, take the single- or two-point change that raises the log-probability
   most and keeps every window: this trades an op that the greedy phase gave up against another.

Costs come from `CostModel.costs` (exact, vectorised), so coupled spaces (elastic) work unchanged.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from flexnas.cost.model import CostModel

PAIR_CHUNK = 4096  # two-point candidates costed per call


def violation(costs: Mapping[str, np.ndarray], windows: Mapping[str, tuple[float, float]]) -> np.ndarray:
    """Summed relative distance of each arch's costs outside its windows (0 = inside every window)."""
    total = 0.0
    for metric, (lo, hi) in windows.items():
        c = costs[metric]
        total = total + np.maximum(c / hi - 1.0, 0.0) + np.maximum(1.0 - c / lo, 0.0)
    return np.asarray(total, dtype=np.float64)


class BudgetDecoder:
    """Decode one arch per row of log-probabilities into cost windows (see the module docstring)."""

    def __init__(self, cost_model: "CostModel", option_counts: Sequence[int], max_moves: int = 1000) -> None:
        self.cost_model = cost_model
        self.max_moves = max_moves
        # Every (point, option) pair as one "move": set `point` to `option`.
        self.move_point = np.concatenate([np.full(n, p, dtype=np.int64) for p, n in enumerate(option_counts)])
        self.move_option = np.concatenate([np.arange(n, dtype=np.int64) for n in option_counts])
        i, j = np.triu_indices(len(self.move_point), k=1)
        different = self.move_point[i] != self.move_point[j]
        self.pair_a, self.pair_b = i[different], j[different]

    def decode(self, logp: Sequence[np.ndarray], windows: Mapping[str, tuple[float, float]]) -> list[int]:
        """`logp`: one log-probability vector per choice point; `windows`: metric -> (low, high)."""
        score = np.concatenate([np.asarray(v, dtype=np.float64) for v in logp])
        offsets = np.concatenate(([0], np.cumsum([len(v) for v in logp])[:-1]))
        choice = np.array([int(np.argmax(v)) for v in logp], dtype=np.int64)
        for _ in range(self.max_moves):
            current = score[offsets + choice]  # per point, the chosen option's log-probability
            gain = score - current[self.move_point]  # change of total log-probability per move
            now = float(violation(self.cost_model.costs(choice[None]), windows)[0])
            if now > 0:
                step = self._toward_window(choice, gain, now, windows)
            else:
                step = self._improve(choice, gain, windows)
            if step is None:
                break
            choice = step
        return choice.tolist()

    def _apply(self, choice: np.ndarray, *moves: np.ndarray) -> np.ndarray:
        out = np.repeat(choice[None], len(moves[0]), 0)
        rows = np.arange(len(out))
        for m in moves:
            out[rows, self.move_point[m]] = self.move_option[m]
        return out

    def _toward_window(self, choice: np.ndarray, gain: np.ndarray, now: float,
                       windows: Mapping[str, tuple[float, float]]) -> np.ndarray | None:
        """The change with the best log-probability per unit of violation removed: single-point
        changes first, two-point ones when no single change gets closer (a narrow window between
        two coarse steps, e.g. dropping a layer overshoots and needs another layer to grow)."""
        def candidates():  # the two-point moves are built only if no single move helps
            singles = np.flatnonzero(self.move_option != choice[self.move_point])
            yield (singles,), gain[singles]
            real = self._real_pairs(choice)
            a, b = self.pair_a[real], self.pair_b[real]
            yield (a, b), gain[a] + gain[b]

        for moves, move_gain in candidates():
            best, best_rate = None, -np.inf
            for start in range(0, len(move_gain), PAIR_CHUNK):
                part = tuple(m[start:start + PAIR_CHUNK] for m in moves)
                cands = self._apply(choice, *part)
                removed = now - violation(self.cost_model.costs(cands), windows)
                helps = removed > 1e-12
                if helps.any():
                    rate = np.where(helps, move_gain[start:start + PAIR_CHUNK] / np.where(helps, removed, 1.0), -np.inf)
                    k = int(np.argmax(rate))
                    if rate[k] > best_rate:
                        best, best_rate = cands[k], float(rate[k])
            if best is not None:
                return best
        return None  # no change of one or two points gets closer: the nearest arch found is returned

    def _real_pairs(self, choice: np.ndarray) -> np.ndarray:
        """Pairs of moves that both change the arch (a no-op move would duplicate a single move)."""
        return (self.move_option[self.pair_a] != choice[self.move_point[self.pair_a]]) & \
               (self.move_option[self.pair_b] != choice[self.move_point[self.pair_b]])

    def _improve(self, choice: np.ndarray, gain: np.ndarray,
                 windows: Mapping[str, tuple[float, float]]) -> np.ndarray | None:
        singles = np.flatnonzero((gain > 1e-12) & (self.move_option != choice[self.move_point]))
        pair_gain = gain[self.pair_a] + gain[self.pair_b]
        pairs = np.flatnonzero(self._real_pairs(choice) & (pair_gain > 1e-12))
        best, best_gain = None, 0.0
        if len(singles):
            cands = self._apply(choice, singles)
            ok = violation(self.cost_model.costs(cands), windows) == 0
            if ok.any():
                k = int(np.argmax(np.where(ok, gain[singles], -np.inf)))
                best, best_gain = cands[k], float(gain[singles][k])
        # Two-point changes in order of gain; the first inside every window is the best one.
        pairs = pairs[np.argsort(-pair_gain[pairs], kind="stable")]
        pairs = pairs[pair_gain[pairs] > best_gain]
        for start in range(0, len(pairs), PAIR_CHUNK):
            chunk = pairs[start:start + PAIR_CHUNK]
            cands = self._apply(choice, self.pair_a[chunk], self.pair_b[chunk])
            ok = np.flatnonzero(violation(self.cost_model.costs(cands), windows) == 0)
            if len(ok):
                return cands[int(ok[0])]
        return best
