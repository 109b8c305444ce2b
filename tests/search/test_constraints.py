import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexnas.errors import ConstraintError, FlexnasError
from flexnas.search import Constraint, check_feasible


@pytest.mark.parametrize("text, metric, low, high, canonical", [
    ("macs<=300M", "macs", None, 300e6, "macs<=300M"),
    ("params<=4.5M", "params", None, 4.5e6, "params<=4.5M"),
    ("macs>=100M", "macs", 100e6, None, "macs>=100M"),
    ("200M<=macs<=300M", "macs", 200e6, 300e6, "200M<=macs<=300M"),
    ("latency_ms<=20", "latency_ms", None, 20.0, "latency_ms<=20"),
    ("  macs <= 300 m ", "macs", None, 300e6, "macs<=300M"),
    ("MACs<=0.3g", "macs", None, 300e6, "macs<=300M"),
    ("params<=250k", "params", None, 250e3, "params<=250K"),
    ("macs<=1.5G", "macs", None, 1.5e9, "macs<=1.5G"),
    ("macs<=3e8", "macs", None, 3e8, "macs<=300M"),
    ("macs<=.5M", "macs", None, 5e5, "macs<=500K"),
    ("100M <= macs", "macs", 100e6, None, "macs>=100M"),
    ("300M>=macs", "macs", None, 300e6, "macs<=300M"),
    ("2.5<=latency_ms<=20", "latency_ms", 2.5, 20.0, "2.5<=latency_ms<=20"),
])
def test_parse_forms(text, metric, low, high, canonical):
    c = Constraint.parse(text)
    assert (c.metric, c.low, c.high) == (metric, low, high)
    assert str(c) == canonical
    assert Constraint.parse(str(c)) == c
    assert Constraint.parse(c) is c


@pytest.mark.parametrize("suffix, scale", [("k", 1e3), ("K", 1e3), ("m", 1e6), ("M", 1e6), ("g", 1e9), ("G", 1e9),
                                           ("", 1.0)])
def test_suffixes_are_case_insensitive(suffix, scale):
    assert Constraint.parse(f"macs<=7{suffix}").high == 7 * scale


@given(value=st.floats(min_value=1e-3, max_value=1e12, allow_nan=False),
       metric=st.sampled_from(["macs", "params", "latency_ms"]),
       upper=st.booleans())
@settings(max_examples=200, deadline=None)
def test_canonical_text_round_trips(value, metric, upper):
    c = Constraint(metric, None, value) if upper else Constraint(metric, value, None)
    back = Constraint.parse(str(c))
    bound = back.high if upper else back.low
    assert back.metric == metric
    assert math.isclose(bound, value, rel_tol=1e-10)


@pytest.mark.parametrize("text", ["macs<300M", "macs=300M", "macs==3", "macs > 3M"])
def test_strict_or_equal_operators_point_to_inclusive_forms(text):
    with pytest.raises(ConstraintError, match=r"use '<=' or '>='.*accepted forms"):
        Constraint.parse(text)


@pytest.mark.parametrize("text", ["", "macs", "macs<=", "<=3M", "macs<=3MB", "macs<=-3", "macs<=3X", "3M<=macs<=",
                                  "1macs<=3M", "macs<=3M params<=1M"])
def test_malformed_text_shows_accepted_forms(text):
    with pytest.raises(ConstraintError, match="accepted forms: 'macs<=300M'") as info:
        Constraint.parse(text)
    assert isinstance(info.value, FlexnasError)


def test_empty_range_and_missing_bounds_are_rejected():
    with pytest.raises(ConstraintError, match="lower bound exceeds the upper bound"):
        Constraint.parse("300M<=macs<=200M")
    with pytest.raises(ConstraintError, match="no bound"):
        Constraint("macs")
    with pytest.raises(ConstraintError, match="finite"):
        Constraint("macs", None, float("inf"))
    with pytest.raises(ConstraintError, match="expected a constraint string"):
        Constraint.parse(300)  # type: ignore[arg-type]


def test_bounds_are_inclusive_and_mask_matches_satisfied():
    c = Constraint.parse("200M<=macs<=300M")
    assert c.satisfied({"macs": 200e6}) and c.satisfied({"macs": 300e6})
    assert not c.satisfied({"macs": 199_999_999.0}) and not c.satisfied({"macs": 300_000_001.0})
    values = np.random.default_rng(0).uniform(100e6, 400e6, size=500)
    values[:2] = [200e6, 300e6]
    mask = c.mask({"macs": values, "params": np.zeros(500)})
    assert mask.dtype == bool and mask.shape == (500,)
    assert mask.tolist() == [c.satisfied({"macs": v}) for v in values]
    assert 0 < mask.sum() < 500


def test_missing_metric_in_costs_names_what_exists():
    with pytest.raises(ConstraintError, match=r"needs metric 'latency_ms'.*\['macs', 'params'\]"):
        Constraint.parse("latency_ms<=20").satisfied({"macs": 1.0, "params": 2.0})
    with pytest.raises(ConstraintError, match="did you mean 'macs'"):
        Constraint("mac", None, 3.0).mask({"macs": np.ones(3)})


def test_labels():
    assert Constraint.parse("macs<=300M").label == "MACs ≤ 300M"
    assert Constraint.parse("200M<=macs<=300M").label == "200M ≤ MACs ≤ 300M"
    assert Constraint.parse("params>=1M").label == "params ≥ 1M"
    assert Constraint.parse("latency_ms<=20").label == "latency ≤ 20 ms"


# ---- feasibility against the real tiny proxyless space ------------------------------------------------

def test_infeasible_target_names_metric_and_exact_range(space):
    cm = space.cost_model()
    lo, hi = cm.range("macs")
    assert (lo, hi) == (208984.0, 2031952.0)  # pins the numbers the messages below print
    with pytest.raises(ConstraintError) as info:
        check_feasible([Constraint.parse("macs<=0.1M")], cm)
    assert str(info.value) == ("target macs<=100K is infeasible: the proxyless space spans 0.209M..2.031M MACs")
    with pytest.raises(ConstraintError, match=r"macs>=3M is infeasible: .*0\.209M\.\.2\.031M MACs"):
        check_feasible(Constraint.parse("macs>=3M"), cm)
    with pytest.raises(ConstraintError, match=r"params<=100K is infeasible: .* params$"):
        check_feasible([Constraint.parse("params<=100K")], cm)


def test_printed_range_is_itself_feasible(space):
    """The range is rounded inwards, so copying the printed minimum into a target never fails."""
    cm = space.cost_model()
    check_feasible([Constraint.parse("macs<=0.209M"), Constraint.parse("macs>=2.031M")], cm)
    lo, hi = cm.range("macs")
    check_feasible([Constraint("macs", None, lo), Constraint("macs", hi, None), Constraint("macs", lo, hi)], cm)
    with pytest.raises(ConstraintError):
        check_feasible([Constraint("macs", None, lo - 1)], cm)


def test_unknown_metric_lists_the_cost_models_metrics(space):
    cm = space.cost_model()
    with pytest.raises(ConstraintError, match=r"unknown metric 'latency_ms'.*has macs, params"):
        check_feasible([Constraint.parse("latency_ms<=20")], cm)
    with pytest.raises(ConstraintError, match="did you mean 'params'"):
        check_feasible([Constraint.parse("param<=1M")], cm)
    with pytest.raises(ConstraintError, match="counts multiply-adds as 'macs'"):
        check_feasible([Constraint.parse("flops<=1M")], cm)
