"""Elastic weight-entangled spaces: Once-for-All's MobileNetV3 (`ofa`) and the BigNAS/AttentiveNAS
MobileNetV3-like space (`bignas`).

An arch chooses the input resolution, widths (stem, stages, head), each stage's depth, and kernel
sizes and expansion ratios (per block in OFA, per stage in AttentiveNAS). Depth keeps a stage's first
d blocks; one supernet holds the weights of the largest net (`flexnas.supernet.elastic`).

Layers are the stem (resolution + stem width), one layer per block of the deepest stage, and the head.
A block's shapes depend on points owned by other layers (the stage width and depth live on the
stage's first block; the input width on the previous stage), so `layer_points` lists those context
points too: cost tables are keyed on them and stay exact lookups, and supernet layers read them.
Both spaces are data (`ElasticMacro`); this class is the only code.
"""
from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Optional, Union

from torch import nn

from flexnas.arch import Arch
from flexnas.errors import ArchError, SpaceError
from flexnas.ops.blocks import BlockStyle, make_divisible
from flexnas.spaces.base import ChoicePoint, Config, LayerSpec, SearchSpace, conv_out
from flexnas.spaces.macro import IMAGENET_MIN_INPUT
from flexnas.supernet.elastic import (BlockSpec, Dim, ElasticHeadLayer, ElasticMBLayer, ElasticStemLayer,
                                      HeadSpec, StemSpec)


@dataclass(frozen=True)
class ElasticStage:
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    kernels: tuple[int, ...]
    expands: tuple[int, ...]
    stride: int
    act: str
    se: bool


@dataclass(frozen=True)
class ElasticMacro:
    resolutions: tuple[int, ...]  # used when input_size >= 128; smaller inputs default to input_size
    stem_widths: tuple[int, ...]
    stem_act: str
    stages: tuple[ElasticStage, ...]
    head_widths: tuple[int, ...]  # the feature-mix conv after the pool (MobileNetV3 head)
    head_act: str
    per_block: bool  # kernel and expansion chosen per block (OFA) or once per stage (AttentiveNAS)
    first_block: Optional[tuple[int, str]] = None  # fixed k3e1 block after the stem: (channels, act)
    conv_shortcut: bool = False  # pool + 1x1 conv residual where a block changes shape
    head_expand: int = 6  # the head's 1x1 expansion is head_expand x the last stage width
    dropout: float = 0.0


_STAGE_PER_STAGE = re.compile(r"^(?:c(\d+))?d(\d+)k(\d+)e(\d+)$")
_BLOCK = re.compile(r"^k(\d+)e(\d+)$")
_WIDTH = re.compile(r"^c(\d+)$")


class ElasticSpace(SearchSpace):
    """Arch strings (docs/spaces.md): `r<res>`, then `c<stem width>` if the stem width is elastic,
    one token per stage, then `c<head width>` if the head width is elastic, joined by '-'. A stage is
    `[c<w>]d<d>k<k>e<e>` when kernel and expansion are chosen per stage, or `[c<w>.]k<k>e<e>.k<k>e<e>...`
    (one `k<k>e<e>` per active block, so the depth is their count) when chosen per block. `c<w>`
    appears only where that width is elastic.

    `resolutions` overrides the resolution choices; inputs under 128 default to their own size and
    use CIFAR strides (stem and first reduction at stride 1), as the other spaces do."""

    macro: ElasticMacro

    def __init__(self, input_size: int = 224, num_classes: int = 1000, width_mult: float = 1.0,
                 resolutions: Optional[Sequence[int]] = None) -> None:
        if resolutions is not None:
            res = tuple(sorted({int(r) for r in resolutions}))
            if not res or res[0] < 1:
                raise SpaceError(f"{self.name}: resolutions must be positive integers, got {list(resolutions)}")
        elif input_size >= IMAGENET_MIN_INPUT:
            res = self.macro.resolutions
        else:
            res = (int(input_size),)
        self.resolutions = res
        super().__init__(input_size, num_classes, width_mult)

    # ---- macro --------------------------------------------------------------------------------
    @property
    def imagenet_strides(self) -> bool:
        return min(self.resolutions) >= IMAGENET_MIN_INPUT

    def _widths(self, widths: Sequence[int]) -> tuple[int, ...]:
        # Scaling can merge neighbouring widths (x0.25: 112 and 120 both give 32): keep distinct ones.
        return tuple(sorted({make_divisible(w * self.width_mult) for w in widths})) if self.width_mult != 1.0 \
            else tuple(widths)

    def _style(self, stage: ElasticStage) -> BlockStyle:
        return BlockStyle(act=stage.act, se_ratio=0.25 if stage.se else 0.0, se_divisor=8,
                          conv_shortcut=self.macro.conv_shortcut)

    def _build_layers(self) -> list[LayerSpec]:
        m = self.macro
        if any(min(s.depths) < 1 for s in m.stages):
            raise SpaceError(f"{self.name}: every stage needs a depth of at least 1")
        n = 0  # global index of the next choice point

        def point(name: str, values: Sequence[int]) -> tuple[int, ChoicePoint]:
            nonlocal n
            n += 1
            return n - 1, ChoicePoint(name, tuple(str(v) for v in values))

        stem_stride = 2 if self.imagenet_strides else 1
        reduce_first = not self.imagenet_strides
        layers: list[LayerSpec] = []
        specs: list[Union[StemSpec, BlockSpec, HeadSpec]] = []
        points: list[tuple[int, ...]] = []
        # hw[r][l]: input size of layer l at resolution index r.
        hw_by_res: list[list[int]] = [[] for _ in self.resolutions]
        self._stage_layers: list[list[int]] = []
        self._width_points: list[int] = []  # stem, stages..., head
        self._owned: dict[int, list[int]] = {}  # layer -> its own points

        p_res, cp_res = point("resolution", self.resolutions)
        stem_widths = self._widths(m.stem_widths)
        p_stem, cp_stem = point("stem.width", stem_widths)
        if m.first_block and len(stem_widths) > 1:
            raise SpaceError(f"{self.name}: a fixed first block needs a fixed stem width")
        first = (self._widths((m.first_block[0],))[0], BlockStyle(act=m.first_block[1])) if m.first_block else None
        ctx = (p_res, p_stem)
        stem = StemSpec(Dim(0, self.resolutions), Dim(1, stem_widths), stem_stride, m.stem_act, first_block=first)
        out_w = first[0] if first else max(stem_widths)
        layers.append(LayerSpec(0, 3, out_w, stem_stride, max(self.resolutions), (cp_res, cp_stem)))
        specs.append(stem)
        points.append(ctx)
        for r, res in enumerate(self.resolutions):
            hw_by_res[r].append(res)
        hw = [conv_out(res, stem_stride) for res in self.resolutions]
        total_stride = stem_stride
        self._width_points.append(p_stem)
        # (point, options) of the current input width: a fixed first block fixes it.
        in_width: tuple[Optional[int], tuple[int, ...]] = (None, (first[0],)) if first else (p_stem, stem_widths)

        for s, stage in enumerate(m.stages, start=1):
            widths = self._widths(stage.widths)
            stride = stage.stride
            if stride == 2 and reduce_first:
                stride, reduce_first = 1, False
            style = self._style(stage)
            p_w, cp_w = point(f"s{s}.width", widths)
            p_d, cp_d = point(f"s{s}.depth", stage.depths)
            stage_own = [cp_w, cp_d]
            if not m.per_block:
                p_k, cp_k = point(f"s{s}.kernel", stage.kernels)
                p_e, cp_e = point(f"s{s}.expand", stage.expands)
                stage_own += [cp_k, cp_e]
            self._width_points.append(p_w)
            self._stage_layers.append([])
            for j in range(max(stage.depths)):
                own: list[ChoicePoint] = list(stage_own) if j == 0 else []
                if m.per_block:
                    p_k, cp_k = point(f"s{s}.b{j}.kernel", stage.kernels)
                    p_e, cp_e = point(f"s{s}.b{j}.expand", stage.expands)
                    own += [cp_k, cp_e]
                c_in_point, c_in_opts = in_width if j == 0 else (p_w, widths)
                roles = {"res": p_res, "c_in": c_in_point, "c_out": p_w, "kernel": p_k, "expand": p_e,
                         "depth": p_d if j > 0 else None}
                lp = tuple(sorted({p for p in roles.values() if p is not None}))

                def dim(role: str, options: tuple[int, ...], roles: dict = roles, lp: tuple = lp) -> Dim:
                    return Dim(lp.index(roles[role]), options) if roles[role] is not None else Dim.fixed(options[0])

                spec = BlockSpec(dim("c_in", c_in_opts), dim("c_out", widths), dim("kernel", stage.kernels),
                                 dim("expand", stage.expands),
                                 dim("depth", stage.depths) if j > 0 else Dim.fixed(max(stage.depths)),
                                 j, stride if j == 0 else 1, style)
                index = len(layers)
                layers.append(LayerSpec(index, max(c_in_opts), max(widths), spec.stride,
                                        max(hw) if j == 0 else max(conv_out(h, stride) for h in hw), tuple(own)))
                specs.append(spec)
                points.append(lp)
                self._stage_layers[-1].append(index)
                for r in range(len(self.resolutions)):
                    hw_by_res[r].append(hw[r] if j == 0 else conv_out(hw[r], stride))
            hw = [conv_out(h, stride) for h in hw]
            total_stride *= stride
            in_width = (p_w, widths)

        head_widths = tuple(m.head_widths) if self.width_mult <= 1.0 else \
            tuple(sorted({make_divisible(w * self.width_mult) for w in m.head_widths}))
        p_h, cp_h = point("head.width", head_widths)
        self._width_points.append(p_h)
        lp = tuple(sorted({p_res, in_width[0], p_h}))  # type: ignore[arg-type]
        head = HeadSpec(Dim(lp.index(in_width[0]), in_width[1]), Dim(lp.index(p_h), head_widths),  # type: ignore[arg-type]
                        self.num_classes, m.head_act, m.head_expand, m.dropout)
        layers.append(LayerSpec(len(layers), max(in_width[1]), self.num_classes, 1, max(hw), (cp_h,)))
        specs.append(head)
        points.append(lp)
        for r in range(len(self.resolutions)):
            hw_by_res[r].append(hw[r])
        if min(self.resolutions) < total_stride:
            raise SpaceError(f"{self.name}: input size {min(self.resolutions)} is too small for its strides "
                             f"(total stride {total_stride}; use an input of at least {total_stride})")
        self._specs, self._points, self._hw = specs, points, hw_by_res
        self._res_point = p_res
        return layers

    @cached_property
    def layer_points(self) -> list[tuple[int, ...]]:
        return list(self._points)

    def _values(self, arch: Arch, layer: LayerSpec) -> tuple[int, ...]:
        return tuple(arch.choices[p] for p in self._points[layer.index])

    # ---- canonical archs ------------------------------------------------------------------------
    def _depth_of(self, choices: Sequence[int], stage: int) -> int:
        first = self.layers[self._stage_layers[stage][0]]
        depth_point = self.layer_slices[first.index].start + 1  # (width, depth, ...) on the first block
        return self.macro.stages[stage].depths[choices[depth_point]]

    def repair(self, choices: Sequence[int]) -> Arch:
        """Blocks beyond their stage's depth hold choice 0, so equal networks are equal archs."""
        out = list(choices)
        for s, layer_ids in enumerate(self._stage_layers):
            d = self._depth_of(out, s)
            for j in layer_ids[d:]:
                sl = self.layer_slices[j]
                out[sl] = [0] * (sl.stop - sl.start)
        return Arch(self.name, tuple(out))

    def validate(self, arch: Arch) -> Arch:
        super().validate(arch)
        for s, layer_ids in enumerate(self._stage_layers):
            d = self._depth_of(arch.choices, s)
            for j, l in enumerate(layer_ids[d:], start=d):
                if any(arch.choices[self.layer_slices[l]]):
                    raise ArchError(f"stage {s + 1} has depth {d}, so block {j} is unused and must hold "
                                    f"choice 0 (canonical form; use space.repair)")
        return arch

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        """Uniform crossover of whole stages (width, depth and blocks together), then repair."""
        out = list(a.choices)
        groups = [[0]] + self._stage_layers + [[len(self.layers) - 1]]
        for layer_ids in groups:
            if rng.random() < 0.5:
                for l in layer_ids:
                    sl = self.layer_slices[l]
                    out[sl] = b.choices[sl]
        return self.repair(out)

    def size(self) -> float:
        m, total = self.macro, float(len(self.resolutions))
        for p in self._width_points:
            total *= len(self.choices[p].options)
        for stage in m.stages:
            ke = len(stage.kernels) * len(stage.expands)
            total *= sum(ke ** d for d in stage.depths) if m.per_block else len(stage.depths) * ke
        return total

    # ---- strings --------------------------------------------------------------------------------
    def _labels(self, p: int) -> tuple[str, ...]:
        return self.choices[p].options

    def _width_token(self, p: int, c: int) -> Optional[str]:
        return f"c{self._labels(p)[c]}" if len(self._labels(p)) > 1 else None

    def encode(self, arch: Arch) -> str:
        self.validate(arch)
        ch = arch.choices
        tokens = [f"r{self._labels(self._res_point)[ch[self._res_point]]}"]
        stem = self._width_token(self._width_points[0], ch[self._width_points[0]])
        tokens += [stem] if stem else []
        for s, layer_ids in enumerate(self._stage_layers):
            first = self.layer_slices[layer_ids[0]].start
            width = self._width_token(first, ch[first])
            d = self._depth_of(ch, s)
            if self.macro.per_block:
                blocks = []
                for l in layer_ids[:d]:
                    sl = self.layer_slices[l]
                    k, e = ch[sl.stop - 2], ch[sl.stop - 1]
                    blocks.append(f"k{self._labels(sl.stop - 2)[k]}e{self._labels(sl.stop - 1)[e]}")
                tokens.append(".".join(([width] if width else []) + blocks))
            else:
                k, e = ch[first + 2], ch[first + 3]
                tokens.append(f"{width or ''}d{d}k{self._labels(first + 2)[k]}e{self._labels(first + 3)[e]}")
        head = self._width_token(self._width_points[-1], ch[self._width_points[-1]])
        tokens += [head] if head else []
        return "-".join(tokens)

    def _grammar(self) -> str:
        parts = ["r<res>"] + (["c<stem>"] if len(self._labels(self._width_points[0])) > 1 else [])
        parts.append(f"{len(self._stage_layers)} stages")
        parts += ["c<head>"] if len(self._labels(self._width_points[-1])) > 1 else []
        return ", ".join(parts)

    def _pick(self, p: int, value: str, where: str) -> int:
        labels = self._labels(p)
        if value not in labels:
            raise ArchError(f"{where}: {self.choices[p].name} {value} is not allowed; allowed: {', '.join(labels)}")
        return labels.index(value)

    def decode(self, text: str) -> Arch:
        if not isinstance(text, str) or not text.strip():
            raise ArchError(f"empty architecture string for space '{self.name}'")
        tokens = [t.strip() for t in text.strip().split("-")]
        stem_elastic = len(self._labels(self._width_points[0])) > 1
        head_elastic = len(self._labels(self._width_points[-1])) > 1
        expected = 1 + stem_elastic + len(self._stage_layers) + head_elastic
        if len(tokens) != expected:
            raise ArchError(f"{self.name} archs have {expected} tokens joined by '-' ({self._grammar()}), "
                            f"got {len(tokens)}")
        ch = [0] * len(self.choices)
        if not tokens[0].startswith("r"):
            raise ArchError(f"token 0 '{tokens[0]}' must be the resolution 'r<res>'; "
                            f"allowed: {', '.join('r' + r for r in self._labels(self._res_point))}")
        ch[self._res_point] = self._pick(self._res_point, tokens[0][1:], "token 0")
        pos = 1
        for p, elastic in ((self._width_points[0], stem_elastic), (self._width_points[-1], head_elastic)):
            if elastic:
                i = pos if p == self._width_points[0] else len(tokens) - 1
                m = _WIDTH.match(tokens[i])
                if not m:
                    raise ArchError(f"token {i} '{tokens[i]}' must be a width 'c<w>'; "
                                    f"allowed: {', '.join('c' + w for w in self._labels(p))}")
                ch[p] = self._pick(p, m.group(1), f"token {i}")
        pos += stem_elastic
        for s, layer_ids in enumerate(self._stage_layers):
            self._decode_stage(s, layer_ids, tokens[pos + s], ch)
        return self.validate(Arch(self.name, tuple(ch)))

    def _decode_stage(self, s: int, layer_ids: list[int], token: str, ch: list[int]) -> None:
        stage = self.macro.stages[s]
        first = self.layer_slices[layer_ids[0]].start
        width_elastic = len(self._labels(first)) > 1
        where = f"stage {s + 1} '{token}'"
        if self.macro.per_block:
            parts = token.split(".")
            if width_elastic:
                m = _WIDTH.match(parts[0])
                if not m:
                    raise ArchError(f"{where}: must start with its width 'c<w>.'; "
                                    f"allowed widths: {', '.join(self._labels(first))}")
                ch[first] = self._pick(first, m.group(1), where)
                parts = parts[1:]
            if len(parts) not in stage.depths:
                raise ArchError(f"{where}: {len(parts)} blocks, but the depth must be one of "
                                f"{', '.join(map(str, stage.depths))}; blocks are 'k<k>e<e>' joined by '.'")
            ch[first + 1] = stage.depths.index(len(parts))
            for j, part in enumerate(parts):
                m = _BLOCK.match(part)
                if not m:
                    raise ArchError(f"{where}: block {j} '{part}' is not 'k<k>e<e>'; kernels "
                                    f"{', '.join(map(str, stage.kernels))}, expansions {', '.join(map(str, stage.expands))}")
                sl = self.layer_slices[layer_ids[j]]
                ch[sl.stop - 2] = self._pick(sl.stop - 2, m.group(1), f"{where} block {j}")
                ch[sl.stop - 1] = self._pick(sl.stop - 1, m.group(2), f"{where} block {j}")
            return
        m = _STAGE_PER_STAGE.match(token)
        if not m or (m.group(1) is not None) != width_elastic:
            form = "c<w>d<d>k<k>e<e>" if width_elastic else "d<d>k<k>e<e>"
            raise ArchError(f"{where}: must be '{form}', e.g. '{self._example_stage(s)}'")
        if width_elastic:
            ch[first] = self._pick(first, m.group(1), where)
        ch[first + 1] = self._pick(first + 1, m.group(2), where)
        ch[first + 2] = self._pick(first + 2, m.group(3), where)
        ch[first + 3] = self._pick(first + 3, m.group(4), where)

    def _example_stage(self, s: int) -> str:
        first = self.layer_slices[self._stage_layers[s][0]].start
        width = f"c{self._labels(first)[0]}" if len(self._labels(first)) > 1 else ""
        st = self.macro.stages[s]
        return f"{width}d{st.depths[0]}k{st.kernels[0]}e{st.expands[0]}"

    # Per-layer spelling (used in messages): own points as name=value.
    def _encode_layer(self, layer: LayerSpec, config: Config) -> str:
        return ",".join(f"{p.name}={p.options[c]}" for p, c in zip(layer.points, config))

    def _decode_layer(self, layer: LayerSpec, token: str) -> Config:
        given = dict(item.split("=", 1) for item in token.split(",") if "=" in item)
        return tuple(self._pick(self.layer_slices[layer.index].start + i, given.get(p.name, ""), f"layer {layer.index}")
                     for i, p in enumerate(layer.points))

    # ---- networks and costs ---------------------------------------------------------------------
    def _stem(self) -> nn.Module:
        return nn.Identity()  # the stem is layer 0: its width and the resolution are searchable

    def _head(self) -> nn.Module:
        return nn.Identity()  # the head is the last layer: its width is searchable

    def _stem_out(self) -> tuple[int, int]:
        return 3, self.input_size

    def _supernet_layer(self, layer: LayerSpec) -> nn.Module:
        spec = self._specs[layer.index]
        counts = tuple(len(self.choices[p].options) for p in self._points[layer.index])
        if isinstance(spec, StemSpec):
            return ElasticStemLayer(spec, counts)
        if isinstance(spec, HeadSpec):
            return ElasticHeadLayer(spec, counts)
        return ElasticMBLayer(spec, counts)

    def _subnet_layer(self, layer: LayerSpec, config: Config, **options: Any) -> nn.Module:
        """`config` holds the values of all of `layer_points[layer]` (context included)."""
        if options:
            raise SpaceError(f"{self.name}: standalone subnets take no options, got {sorted(options)}")
        return self._specs[layer.index].build(config)

    def subnet(self, arch: Arch, **options: Any) -> nn.Module:
        from flexnas.ops.init import init_weights
        from flexnas.supernet import Network

        self.validate(arch)
        layers = [self._subnet_layer(layer, self._values(arch, layer), **options) for layer in self.layers]
        return init_weights(Network(nn.Identity(), layers, nn.Identity()))

    def _cost_key(self, layer: LayerSpec, config: Config) -> Any:
        spec = self._specs[layer.index]
        res = self.resolutions.index(spec.resolution.of(config)) if isinstance(spec, StemSpec) else \
            config[self._points[layer.index].index(self._res_point)]
        used = tuple(d.of(config) for d in spec.used)
        if isinstance(spec, BlockSpec):
            if spec.config(config) is None:
                return None
            used = spec.config(config)  # type: ignore[assignment]
        return type(spec).__name__, spec.stride if isinstance(spec, (BlockSpec, StemSpec)) else 0, \
            getattr(spec, "style", None), used, self._hw[res][layer.index]

    def _layer_cost(self, layer: LayerSpec, config: Config,
                    measure: Callable[[Config], dict[str, float]]) -> dict[str, float]:
        """Counts the standalone module of this config at its input size, memoised across layers
        (blocks of a stage share shapes) and sizes (resolutions)."""
        key = self._cost_key(layer, config)
        if key is None:
            return {"macs": 0, "params": 0}
        # One module per structure (the key without the input size), counted for every size at once.
        by_size = self.__dict__.setdefault("_count_memo", {})
        if key[:-1] not in by_size:
            from flexnas.cost.counter import count_by_size

            spec = self._specs[layer.index]
            c_in = 3 if isinstance(spec, StemSpec) else spec.c_in.of(config)
            by_size[key[:-1]] = count_by_size(spec.build(config), c_in)
        return by_size[key[:-1]](key[-1])


def _stage(widths: tuple[int, ...], depths: tuple[int, ...], kernels: tuple[int, ...], expands: tuple[int, ...],
           stride: int, act: str, se: bool) -> ElasticStage:
    return ElasticStage(widths, depths, kernels, expands, stride, act, se)


class OFASpace(ElasticSpace):
    """Once-for-All's MobileNetV3 space (`ofa_mbv3_d234_e346_k357_w1.0`): 5 elastic stages of up to 4
    blocks, kernel {3,5,7} and expansion {3,4,6} per block, depth {2,3,4} per stage, resolution 128-224
    in steps of 4; fixed widths 16 (stem, h-swish) / 16 (k3e1 block, ReLU) / 24-40-80-112-160, ReLU in
    the first two stages and h-swish after, SE in the 40/112/160 stages; head 960 -> 1280."""

    name = "ofa"
    _K, _E, _D = (3, 5, 7), (3, 4, 6), (2, 3, 4)
    macro = ElasticMacro(
        resolutions=tuple(range(128, 225, 4)), stem_widths=(16,), stem_act="hswish", first_block=(16, "relu"),
        stages=(_stage((24,), _D, _K, _E, 2, "relu", False), _stage((40,), _D, _K, _E, 2, "relu", True),
                _stage((80,), _D, _K, _E, 2, "hswish", False), _stage((112,), _D, _K, _E, 1, "hswish", True),
                _stage((160,), _D, _K, _E, 2, "hswish", True)),
        head_widths=(1280,), head_act="hswish", per_block=True, dropout=0.1)


class BigNASSpace(ElasticSpace):
    """The BigNAS/AttentiveNAS MobileNetV3-like space, ranges as AttentiveNAS's `supernet_config`
    (configs/eval_attentive_nas_models.yml): resolution {192,224,256,288}, elastic stem/stage/head
    widths and depths, kernel and expansion per stage, swish throughout, SE in mb3/mb5/mb6/mb7, and a
    pool + 1x1 conv shortcut wherever a block changes shape."""

    name = "bignas"
    macro = ElasticMacro(
        resolutions=(192, 224, 256, 288), stem_widths=(16, 24), stem_act="swish",
        stages=(_stage((16, 24), (1, 2), (3, 5), (1,), 1, "swish", False),
                _stage((24, 32), (3, 4, 5), (3, 5), (4, 5, 6), 2, "swish", False),
                _stage((32, 40), (3, 4, 5, 6), (3, 5), (4, 5, 6), 2, "swish", True),
                _stage((64, 72), (3, 4, 5, 6), (3, 5), (4, 5, 6), 2, "swish", False),
                _stage((112, 120, 128), (3, 4, 5, 6, 7, 8), (3, 5), (4, 5, 6), 1, "swish", True),
                _stage((192, 200, 208, 216), (3, 4, 5, 6, 7, 8), (3, 5), (6,), 2, "swish", True),
                _stage((216, 224), (1, 2), (3, 5), (6,), 1, "swish", True)),
        head_widths=(1792, 1984), head_act="swish", per_block=False, conv_shortcut=True, dropout=0.2)


__all__ = ["BigNASSpace", "ElasticMacro", "ElasticSpace", "ElasticStage", "OFASpace"]
