"""Published architectures rebuilt in our spaces, with the numbers their authors publish.

Sources and counting conventions are in docs/zoo_sources.md. MACs are conv + linear multiply-adds.
`params_include_bn` says which parameter convention the published figure uses (papers differ)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from flexnas import spaces
from flexnas.arch import Arch
from flexnas.cost.counter import count
from flexnas.errors import SpaceError, did_you_mean


@dataclass(frozen=True)
class ZooEntry:
    name: str
    space: str
    arch: str
    published_macs: float
    published_params: Optional[float]
    source: str
    params_include_bn: bool = True
    space_kwargs: dict[str, Any] = field(default_factory=dict)
    subnet_options: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def space_for(self, input_size: int = 224, num_classes: int = 1000) -> spaces.SearchSpace:
        return spaces.get(self.space, input_size=input_size, num_classes=num_classes, **self.space_kwargs)

    def parse(self, input_size: int = 224, num_classes: int = 1000) -> Arch:
        return self.space_for(input_size, num_classes).decode(self.arch)

    def build(self, input_size: int = 224, num_classes: int = 1000) -> nn.Module:
        """A freshly initialised standalone network of this architecture."""
        space = self.space_for(input_size, num_classes)
        return space.subnet(space.decode(self.arch), **self.subnet_options)

    def measure(self) -> dict[str, float]:
        """Our count at 224x224, 1000 classes: MACs, params, and params without BatchNorm."""
        with torch.device("meta"):
            net = self.build()
        counted = count(net, (3, 224, 224))
        bn = sum(p.numel() for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 for p in m.parameters(recurse=False))
        return {"macs": counted["macs"], "params": counted["params"], "params_no_bn": counted["params"] - bn}


_MBV2 = "-".join(["k3e6"] * 16)

ENTRIES: dict[str, ZooEntry] = {e.name: e for e in [
    ZooEntry("mobilenetv2", "mobilenetv2", _MBV2, 300e6, 3.47e6,
             "Sandler et al. 2018 (300M MACs); TF-slim README (3.47M params)", params_include_bn=False,
             note="the paper's '3.4M' is 3.47M truncated; 3.50M counting BatchNorm (torchvision)"),
    ZooEntry("fbnet_a", "fbnet",
             "skip-k3e3-k3e1-skip-skip-k5e6-k3e3-k5e1-k3e3-k5e6-k5e3-k5e1g2-k5e6-k3e6-k5e1g2-k5e3-k3e1g2-"
             "k5e6-k5e6-k5e3-k5e6-k5e6", 249e6, 4.3e6, "Wu et al. 2019 (FBNet), mobile-vision release",
             params_include_bn=False, space_kwargs={"head_channels": 1504},
             note="FBNet-A's released head is 1504 wide"),
    ZooEntry("fbnet_b", "fbnet",
             "k3e1-k3e6-k5e1-k3e1-k3e1-k5e6-k5e3-k3e6-k5e6-k5e6-k5e1-skip-k5e3-k5e6-k3e1-k5e1-k5e3-k5e6-"
             "k5e1-k5e6-k5e6-k3e6", 295e6, 4.78e6, "Wu et al. 2019 (295M); mobile-vision model zoo (4.78M)",
             params_include_bn=False, note="the paper's 4.5M params is not reproducible from any release"),
    ZooEntry("fbnet_c", "fbnet",
             "k3e1-k3e6-skip-k3e1-k3e1-k5e6-k5e3-k5e6-k3e6-k5e6-k5e3-k5e6-k5e6-k5e6-k5e6-k5e6-k5e3-k5e6-"
             "k5e6-k5e6-k5e6-k3e6", 383e6, 5.52e6, "mobile-vision model zoo (383.0M, 5.52M)",
             params_include_bn=False,
             note="the paper's 375M is not reproducible; the released checkpoint swaps two ops (383.0M)"),
    ZooEntry("proxyless_mobile", "proxyless",
             "k5e3-k3e3-skip-skip-k7e3-k3e3-k5e3-k5e3-k7e6-k5e3-k5e3-k5e3-k5e6-k5e3-k5e3-k5e3-k7e6-k7e6-"
             "k7e3-k7e3-k7e6", 320.4e6, 4.08e6, "Cai et al. 2019, mit-han-lab/proxylessnas training log"),
    ZooEntry("spos", "spos",
             "shuffle3-shuffle5-shuffle7-shuffle7-shuffle5-shuffle5-shuffle7-shuffle5-xception-xception-"
             "shuffle3-xception-shuffle3-xception-shuffle3-shuffle3-shuffle7-shuffle7-shuffle7-shuffle5",
             322.9e6, None, "Guo et al. 2020 (SPOS) arch, MACs by DSNAS's per-op table",
             note="DSNAS counts the classifier as (2*1024-1)*1000 FLOPs, hence 322.9M vs 321.8M MACs"),
    ZooEntry("sgnas_a", "sgnas",
             "k5.7.3.7.3.3-k7.3.3.3-k3.5.3-k7.7.3.7.5-k7.5.3.3-k7.5.5.5.7-k7.3.3.7.7-k7.3.3.3.3-k7.5.5.7.3-"
             "k7.5.5.3-k5.7.3.5-k7.7.3.7-k7.3.5.3-k7.7.3.5-k3.7.3.3-k3.3.3.7.3-k7.3.3.7-k7.7.7-k3.3.7.3.7",
             373e6, 6.0e6, "Huang & Chu 2021 (SGNAS) model zoo",
             subnet_options={"se_ratio": 0.25, "act": "hswish"},
             note="SE (expanded/4, hard-sigmoid) and h-swish as in the SGNAS release"),
    ZooEntry("attentivenas_a0", "bignas",
             "r192-c16-c16d1k3e1-c24d3k3e4-c32d3k3e4-c64d3k3e4-c112d3k3e4-c192d3k3e6-c216d1k3e6-c1792",
             203e6, None, "Wang et al. 2021 (AttentiveNAS) README; arch from configs/eval_attentive_nas_models.yml",
             note="the bignas space's smallest net; input resized to 192 inside the net"),
    ZooEntry("attentivenas_a6", "bignas",
             "r288-c16-c16d1k3e1-c24d3k3e4-c32d3k3e6-c64d4k3e5-c112d4k3e4-c216d6k5e6-c224d1k3e6-c1984",
             709e6, None, "Wang et al. 2021 (AttentiveNAS) README; arch from configs/eval_attentive_nas_models.yml",
             note="input resized to 288 inside the net"),
    ZooEntry("ofa_largest", "ofa", "r224-" + "-".join([".".join(["k7e6"] * 4)] * 5), 566.17e6, 7.66e6,
             "computed: OFA MobileNetV3 macro (mit-han-lab/once-for-all ofa_mbv3.py), layer-by-layer "
             "formula in docs/zoo_sources.md", note="d4 k7 e6 everywhere at 224"),
    ZooEntry("ofa_smallest_224", "ofa", "r224-" + "-".join([".".join(["k3e3"] * 2)] * 5), 121.28e6, 3.41e6,
             "computed: OFA MobileNetV3 macro (mit-han-lab/once-for-all ofa_mbv3.py), layer-by-layer "
             "formula in docs/zoo_sources.md", note="d2 k3 e3 everywhere at 224"),
]}


def names() -> list[str]:
    return list(ENTRIES)


def get(name: str) -> ZooEntry:
    try:
        return ENTRIES[name]
    except KeyError:
        raise SpaceError(f"unknown zoo model '{name}'{did_you_mean(name, ENTRIES)}; "
                         f"known: {', '.join(ENTRIES)}") from None


def table() -> list[dict[str, Any]]:
    """One row per entry: our counts next to the published ones, with relative differences."""
    rows = []
    for e in ENTRIES.values():
        m = e.measure()
        ours_params = m["params"] if e.params_include_bn else m["params_no_bn"]
        rows.append({
            "name": e.name, "space": e.space, "arch": e.arch,
            "macs": m["macs"], "published_macs": e.published_macs,
            "macs_diff": m["macs"] / e.published_macs - 1,
            "params": ours_params, "params_with_bn": m["params"], "published_params": e.published_params,
            "params_diff": (ours_params / e.published_params - 1) if e.published_params else None,
            "params_convention": "with BN" if e.params_include_bn else "without BN",
            "source": e.source, "note": e.note,
        })
    return rows
