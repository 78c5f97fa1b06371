"""Network registry: an architecture name plus a JSON-able config builds a network.

Every network has the signature net(x, t) -> output, where t holds integer
timesteps 0..T-1 (shape [N]) and the output has x's shape.
"""
from __future__ import annotations

import importlib

from torch import nn

# name -> "module:callable"; imported lazily so that `import xurdif` stays light.
ARCHITECTURES = {
    "xurdif_unet": "xurdif.models.unet:UNet",
    "tinyunet_with_attention3": "xurdif.models.legacy:TinyUNetWithAttention3",
    "unet0": "xurdif.models.legacy:Unet0",
    "unet1": "xurdif.models.legacy:Unet1",
    "unet2": "xurdif.models.legacy:Unet2",
    "unetcn0": "xurdif.models.legacy:UnetCN0",
}


def build_network(architecture: str, config: dict) -> nn.Module:
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {architecture!r}; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    module, name = ARCHITECTURES[architecture].split(":")
    return getattr(importlib.import_module(module), name)(**config)
