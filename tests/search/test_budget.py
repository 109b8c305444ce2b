"""Budget decoding: the most likely arch whose exact cost lies in [target * (1 - band), target]."""
import itertools

import numpy as np
import pytest

from flexnas import spaces
from flexnas.errors import ConfigError
from flexnas.search import Generator, GeneratorConfig
from flexnas.search.budget import BudgetDecoder, violation
from flexnas.search.generator import spread_targets, targeting_stats


def random_logp(rng, counts, scale=2.0):
    out = []
    for n in counts:
        v = rng.normal(scale=scale, size=n)
        out.append(v - np.log(np.exp(v).sum()))
    return out


def total(logp, choice):
    return sum(float(lp[c]) for lp, c in zip(logp, choice))


@pytest.mark.parametrize("name", ["proxyless", "spos"])
def test_decoded_archs_sit_in_their_window_and_no_change_of_one_or_two_points_does_better(name):
    space = spaces.get(name, input_size=8, num_classes=10, width_mult=0.25)
    model = space.cost_model()
    counts = [len(p.options) for p in space.choices]
    decoder = BudgetDecoder(model, counts)
    rng = np.random.default_rng(0)
    moves = [(p, o) for p, n in enumerate(counts) for o in range(n)]
    for target in spread_targets(space, 6):
        logp = random_logp(rng, counts)
        window = {"macs": (0.95 * target, target)}
        choice = np.array(decoder.decode(logp, window))
        cost = model.costs(choice[None])["macs"][0]
        assert 0.95 * target <= cost <= target, (target, cost)
        # Local optimality, which the decoder promises: no feasible single or two-point change gains.
        best = total(logp, choice)
        for (p, o), (q, r) in itertools.combinations_with_replacement(moves, 2):
            if p == q and o != r:
                continue
            other = choice.copy()
            other[p], other[q] = o, r
            if violation(model.costs(other[None]), window)[0] == 0:
                assert total(logp, other) <= best + 1e-9


def test_an_argmax_inside_the_window_is_kept_and_an_outside_one_is_moved_in():
    space = spaces.get("proxyless", input_size=8, num_classes=10, width_mult=0.25)
    model = space.cost_model()
    counts = [len(p.options) for p in space.choices]
    decoder = BudgetDecoder(model, counts)
    logp = random_logp(np.random.default_rng(1), counts)
    argmax = np.array([int(np.argmax(v)) for v in logp])
    cost = float(model.costs(argmax[None])["macs"][0])
    assert decoder.decode(logp, {"macs": (0.97 * cost, 1.01 * cost)}) == argmax.tolist()
    lo, hi = space.cost_range("macs")
    tight = max(lo * 1.1, 0.8 * cost)   # a budget 20% under the argmax (or near the low end)
    moved = np.array(decoder.decode(logp, {"macs": (0.95 * tight, tight)}))
    assert 0.95 * tight <= model.costs(moved[None])["macs"][0] <= tight
    # A narrow window between two coarse steps (the smallest archs) needs a two-point change.
    low = lo + 0.01 * (hi - lo)
    got = np.array(decoder.decode(logp, {"macs": (lo, low)}))
    assert lo <= model.costs(got[None])["macs"][0] <= low


def test_generate_with_the_budget_decoder_never_exceeds_a_target():
    space = spaces.get("spos", input_size=8, num_classes=10, width_mult=0.25)
    gen = Generator(space)
    gen.fit(None, space, None, steps=60, ce_weight=0)   # under-fitted: its argmax misses targets
    targets = spread_targets(space, 20)
    loose = targeting_stats(gen.generate_with_costs(targets, decode="argmax"))
    rows = gen.generate_with_costs(targets)   # decode="budget" is the default
    st = targeting_stats(rows)
    assert loose["max_rel_error"] > 0 or loose["min_rel_error"] < -0.05  # the argmax misses somewhere
    assert st["max_rel_error"] <= 0 and st["min_rel_error"] >= -0.04, st  # the default band: 4%
    assert all(r["macs"] <= r["target_macs"] for r in rows)
    narrow = targeting_stats(gen.generate_with_costs(targets, decode="budget", band=0.03))
    assert narrow["min_rel_error"] >= -0.03 and narrow["max_rel_error"] <= 0
    with pytest.raises(ConfigError, match="decode must be one of argmax, budget.*did you mean 'budget'"):
        gen.generate(targets, decode="budgte")
    for bad in (GeneratorConfig, lambda decode_band: gen.generate(targets, band=decode_band)):
        with pytest.raises(ConfigError, match=r"decode_band .*must be in \(0, 1\), got 1.5"):
            bad(decode_band=1.5)
