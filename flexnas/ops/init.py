"""Weight initialisation shared by supernets and standalone nets.

PyTorch's default conv init trains deep inverted-residual stacks slowly; the MobileNet recipe
(Kaiming fan-out convs, small linear, residual branches whose last BN starts at zero so each block
begins as the identity) makes a 20-layer net train from the first epoch."""
from __future__ import annotations

from torch import nn


def init_weights(model: nn.Module) -> nn.Module:
    first = next(model.parameters(), None)
    if first is not None and first.is_meta:
        return model  # meta tensors hold no values (cost counting); their init ops are slow Python refs
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in model.modules():
        zero = getattr(m, "residual_bns", None)
        if callable(zero) and getattr(m, "use_residual", False):
            for bn in zero():
                if bn.affine:
                    nn.init.zeros_(bn.weight)
    return model
