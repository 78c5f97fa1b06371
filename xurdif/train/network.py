"""The network a recipe trains: our U-Net from a preset, or any model file
(`model.init_from`, e.g. an imported urdiffusion checkpoint) to fine-tune."""
from __future__ import annotations

import logging
from dataclasses import replace

import torch

from ..models import build_network
from ..models.unet import unet_config
from ..recipe import Recipe, recipe_to_yaml
from ..weights import ModelMeta, load_network
from . import augment

log = logging.getLogger("xurdif.train")


def recipe_net_config(recipe: Recipe) -> dict:
    m = recipe.model
    return unet_config(
        m.preset, base_width=m.base_width, mults=m.mults, blocks_per_level=m.blocks_per_level,
        attn_levels=m.attn_levels, head_dim=m.head_dim, dropout=m.dropout or None,
        aug_dim=augment.AUG_DIM if augment.enabled(recipe.augment) else None,
    )


def build_for_recipe(recipe: Recipe) -> tuple[torch.nn.Module, ModelMeta]:
    size = (recipe.data.size, recipe.data.size)
    if recipe.model.init_from:
        # A fine-tune keeps the starting model's network, schedule, prediction type
        # and value range: its weights only make sense with those.
        net, meta = load_network(recipe.model.init_from, weights="ema")
        if augment.enabled(recipe.augment) and meta.net_config.get("aug_dim", 0) != augment.AUG_DIM:
            raise ValueError(
                f"augment.p: model.init_from {recipe.model.init_from} has no input for augmentation labels "
                "(it was trained without augment); set augment.p: 0 to fine-tune it")
        d = recipe.diffusion
        if (d.schedule, d.timesteps, d.prediction) != (meta.schedule, meta.timesteps, meta.prediction):
            log.warning(
                "model.init_from %s: using its schedule %s/%d and prediction %s instead of the recipe's",
                recipe.model.init_from, meta.schedule, meta.timesteps, meta.prediction,
            )
        meta = replace(meta, image_size=size, recipe=recipe_to_yaml(recipe),
                       source=f"fine-tuned from {recipe.model.init_from}")
        return net.train(), meta
    config = recipe_net_config(recipe)
    meta = ModelMeta(
        architecture="xurdif_unet", net_config=config, schedule=recipe.diffusion.schedule,
        timesteps=recipe.diffusion.timesteps, prediction=recipe.diffusion.prediction,
        value_range=(-1.0, 1.0), image_size=size, recipe=recipe_to_yaml(recipe), source=f"trained by {recipe.name}",
    )
    return build_network(meta.architecture, config), meta


def parameter_count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
