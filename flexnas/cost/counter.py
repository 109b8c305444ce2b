"""Count multiply-adds (conv + linear, the unit papers call FLOPs) and parameters of a module."""
from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
from torch import nn

from flexnas.ops.blocks import HardSigmoid, HardSwish

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Sigmoid, nn.Hardswish, nn.Hardsigmoid, HardSwish, HardSigmoid)


def count(module: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """MACs of one forward pass of a single sample, and the parameter count.

    Runs on the module's own device; on the `meta` device this costs no arithmetic, which is how the
    cost tables measure thousands of candidate modules quickly."""
    macs = 0

    def conv_hook(m: nn.Conv2d, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal macs
        kh, kw = m.kernel_size
        macs += out[0].numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal macs
        macs += out[0].numel() * m.in_features

    handles = []
    bypassed = []
    first = next(module.parameters(), None)
    on_meta = first is not None and first.device.type == "meta"
    for m in module.modules():
        if (isinstance(m, nn.modules.batchnorm._BatchNorm) and _on_meta(m)) or \
                (on_meta and isinstance(m, _ACTIVATIONS)):
            # BN and activations change no shape and add no MACs; their meta kernels are slow Python
            # decompositions (milliseconds per call, which dominates building elastic cost tables).
            m.forward = _identity  # type: ignore[method-assign]
            bypassed.append(m)
        elif isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        param = next(module.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        was_training = module.training
        module.eval()
        with torch.no_grad():
            module(torch.zeros((1, *input_shape), device=device))
        module.train(was_training)
    finally:
        for h in handles:
            h.remove()
        for m in bypassed:
            del m.forward
    params = sum(p.numel() for p in module.parameters())
    return {"macs": int(macs), "params": int(params)}


def _on_meta(m: nn.Module) -> bool:
    p = next(m.parameters(recurse=False), None)
    buf = next(m.buffers(recurse=False), None)
    t = p if p is not None else buf
    return t is not None and t.device.type == "meta"


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def count_by_size(module: nn.Module, channels: int) -> Callable[[int], dict[str, int]]:
    """`size -> count(module, (channels, size, size))` from two counts instead of one per size.

    Each conv's output is ceil(size / S) square for its cumulative stride S ('same' padding, ceil-mode
    pooling) or 1x1 (after a global pool), so its MACs are per-pixel MACs x that area. S is read off
    a count at a size divisible by every power-of-two stride up to 512, and the rule is checked by a
    count at an awkward size; a module that breaks it (one that resamples its input) is counted
    directly at every size. Elastic spaces count each block structure once this way instead of once
    per resolution."""
    ref, probe = 1024, 99
    convs, params = _conv_shapes(module, (channels, ref, ref))

    def predict(size: int) -> int:
        total = 0
        for per_pixel, (h, w) in convs:
            if h is None:  # a linear layer or a conv after a global pool
                total += per_pixel * w
            else:
                total += per_pixel * -(-size // h) * -(-size // w)
        return total

    exact = all(h is None or h > 0 for _, (h, w) in convs)
    if not exact or predict(probe) != count(module, (channels, probe, probe))["macs"]:
        return lambda size: count(module, (channels, size, size))
    return lambda size: {"macs": predict(size), "params": params}

def _conv_shapes(module: nn.Module, input_shape: tuple[int, int, int]) \
        -> tuple[list[tuple[int, tuple[Optional[int], int]]], int]:
    """Per conv/linear: (MACs per output pixel, (stride_h, stride_w)) relative to the input, or
    (MACs per output element group, (None, number of groups)) when the output size is fixed."""
    out: list[tuple[int, tuple[Optional[int], int]]] = []
    ref = input_shape[1]

    def conv_hook(m: nn.Conv2d, inputs: tuple[torch.Tensor, ...], y: torch.Tensor) -> None:
        kh, kw = m.kernel_size
        per_pixel = y.shape[1] * (m.in_channels // m.groups) * kh * kw
        oh, ow = y.shape[-2:]
        if oh == 1 and ow == 1:
            out.append((per_pixel, (None, 1)))
        elif ref % oh or ref % ow:  # not a stride of the input: the module resamples it
            out.append((per_pixel, (0, 0)))
        else:
            out.append((per_pixel, (ref // oh, ref // ow)))

    def linear_hook(m: nn.Linear, inputs: tuple[torch.Tensor, ...], y: torch.Tensor) -> None:
        out.append((y[0].numel() * m.in_features, (None, 1)))

    handles = [m.register_forward_hook(conv_hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_hook(linear_hook) for m in module.modules() if isinstance(m, nn.Linear)]
    try:
        params = count(module, input_shape)["params"]
    finally:
        for h in handles:
            h.remove()
    return out, params
