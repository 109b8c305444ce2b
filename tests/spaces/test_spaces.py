import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexnas import Arch, spaces
from flexnas.errors import ArchError, SpaceError
from tests.conftest import ALL_SPACES, small_space

SPACES = {name: small_space(name) for name in ALL_SPACES}
seeds = st.integers(min_value=0, max_value=2**31 - 1)


@pytest.mark.parametrize("name", ALL_SPACES)
@settings(max_examples=40, deadline=None)
@given(seed=seeds)
def test_encode_decode_round_trip(name, seed):
    space = SPACES[name]
    arch = space.sample(random.Random(seed))
    text = space.encode(arch)
    assert space.decode(text) == arch
    assert Arch.from_json(arch.to_json()) == arch
    assert hash(space.decode(text)) == hash(arch)


@pytest.mark.parametrize("name", ALL_SPACES)
@settings(max_examples=40, deadline=None)
@given(seed=seeds, prob=st.floats(0.0, 1.0))
def test_mutate_and_crossover_stay_valid(name, seed, prob):
    space = SPACES[name]
    rng = random.Random(seed)
    a, b = space.sample(rng), space.sample(rng)
    for child in (space.mutate(a, prob, rng), space.crossover(a, b, rng)):
        space.validate(child)
        assert space.decode(space.encode(child)) == child


@pytest.mark.parametrize("name", ALL_SPACES)
def test_mutation_changes_and_crossover_mixes(name):
    space, rng = SPACES[name], random.Random(1)
    a = space.sample(rng)
    assert space.mutate(a, 0.0, rng) == a
    assert space.mutate(a, 1.0, rng) != a
    b = space.sample(rng)
    children = {space.crossover(a, b, rng) for _ in range(20)}
    assert len(children) > 2  # layers really come from both parents


@pytest.mark.parametrize("name", ALL_SPACES)
def test_smallest_and_largest_are_valid_and_ordered(name):
    space = SPACES[name]
    cm = space.cost_model()
    lo, hi = cm.cost(space.smallest())["macs"], cm.cost(space.largest())["macs"]
    assert (lo, hi) == space.cost_range("macs")
    assert lo < hi


def test_registry_and_unknown_space():
    assert {"proxyless", "fbnet", "spos", "sgnas"} <= set(spaces.names())
    with pytest.raises(SpaceError, match="did you mean 'proxyless'"):
        spaces.get("proxyles")
    with pytest.raises(SpaceError, match="width_mul"):
        spaces.get("fbnet", width_mul=0.5)


@pytest.mark.parametrize("name", ALL_SPACES)
def test_input_too_small_for_strides(name):
    with pytest.raises(SpaceError, match="too small"):
        spaces.get(name, input_size=4)
    spaces.get(name, input_size=8, num_classes=10)  # digits-sized input works
    spaces.get(name, input_size=28, num_classes=10)


def test_macro_tables_match_the_papers():
    proxyless = spaces.get("proxyless")
    assert len(proxyless.layers) == 21
    assert [l.c_out for l in proxyless.layers][::4] == [32, 40, 80, 96, 192, 320]
    assert sum(l.stride == 2 for l in proxyless.layers) == 4
    assert len(spaces.get("fbnet").layers) == 22
    spos = spaces.get("spos")
    assert len(spos.layers) == 20 and [l.c_out for l in spos.layers][::4] == [64, 160, 320, 320, 640]
    sgnas = spaces.get("sgnas")
    assert len(sgnas.layers) == 19 and len(sgnas.choices) == 19 * 6
    # CIFAR variant: stem and first reduction at stride 1, so 32x32 ends at 4x4.
    cifar = spaces.get("proxyless", input_size=32, num_classes=10)
    assert cifar.layers[0].stride == 1 and cifar.layers[0].in_hw == 32
    assert cifar.layers[-1].in_hw == 4


BAD_STRINGS = [
    ("proxyless", "k3e6", "21 layers"),
    ("proxyless", "-".join(["k9e6"] * 21), "layer 0: unknown op 'k9e6'; allowed: k3e3"),
    ("proxyless", "-".join(["skip"] * 21), "layer 0: 'skip' is not allowed where the shape changes"),
    ("fbnet", "-".join(["k3e1g3"] * 22), "unknown op 'k3e1g3'"),
    ("spos", "-".join(["shuffle9"] * 20), "layer 0: unknown op 'shuffle9'; allowed: shuffle3, shuffle5"),
    ("sgnas", "-".join(["k3.4"] * 19), "layer 0: kernel '4' in 'k3.4' is not one of (3, 5, 7)"),
    ("sgnas", "-".join(["k3.3.3.3.3.3.3"] * 19), "at most 6"),
    ("sgnas", "-".join(["skip"] * 19), "layer 0: 'skip' is not allowed where the shape changes"),
    ("sgnas", "-".join(["x3"] * 19), "is not a layer"),
    ("sgnas", "", "empty"),
]


@pytest.mark.parametrize("name,text,message", BAD_STRINGS)
def test_malformed_strings_name_layer_token_and_allowed_values(name, text, message):
    with pytest.raises(ArchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SPACES[name].decode(text)


def test_arch_from_another_space_is_rejected():
    a = SPACES["proxyless"].sample(random.Random(0))
    with pytest.raises(ArchError, match="belongs to space 'proxyless'"):
        SPACES["fbnet"].encode(a)
    with pytest.raises(ArchError, match="choices"):
        SPACES["proxyless"].validate(Arch("proxyless", (0, 1)))


def test_sgnas_strings():
    space = spaces.get("sgnas")
    layer_tokens = ["k5.7.3.7.3.3", "k7.3.3.3"] + ["k5.5.3"] * 17
    arch = space.decode("-".join(layer_tokens))
    assert space.encode(arch) == "-".join(layer_tokens)
    # a shape-preserving layer may switch off entirely
    tokens = list(layer_tokens)
    tokens[1] = "skip"
    assert space.encode(space.decode("-".join(tokens))).split("-")[1] == "skip"
