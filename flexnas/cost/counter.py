"""Count multiply-adds (conv + linear, the unit papers call FLOPs) and parameters of a module."""
from __future__ import annotations

import torch
from torch import nn


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
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and _on_meta(m):
            # BN changes no shape and adds no MACs; its meta kernel is a slow Python decomposition.
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
