"""A tiny untrained model file for render, gallery and studio tests (seconds to sample)."""
from __future__ import annotations

from pathlib import Path

import torch

from xurdif.models.unet import UNet, unet_config
from xurdif.weights import ModelMeta, save_model_file


def save_tiny_model(path: Path, prediction: str = "eps") -> Path:
    torch.manual_seed(0)
    cfg = unet_config("tiny", base_width=8, mults=[1, 2], norm_groups=4, head_dim=8)
    net = UNet(**cfg)
    # The output layer starts at zero; random weights make images differ by seed.
    torch.nn.init.normal_(net.out.weight, std=0.05)
    meta = ModelMeta(architecture="xurdif_unet", net_config=cfg, image_size=(16, 16), prediction=prediction,
                     source="test", images_seen=4096)
    state = net.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model_file(path, meta, state, {k: v + 0.01 for k, v in state.items()})
    return path
