"""The network a recipe trains: our U-Net from a preset, or any model file
(`model.init_from`, e.g. an imported urdiffusion checkpoint) to fine-tune."""
from __future__ import annotations

import logging
import os
from dataclasses import replace

import torch

from ..models import build_network
from ..models.unet import unet_config
from ..recipe import OptimCfg, Recipe, TrainCfg, recipe_to_yaml
from ..weights import ModelMeta, inherited_extra, load_network
from . import augment

log = logging.getLogger("xurdif.train")


def recipe_net_config(recipe: Recipe) -> dict:
    m = recipe.model
    return unet_config(
        m.preset, base_width=m.base_width, mults=m.mults, blocks_per_level=m.blocks_per_level,
        attn_levels=m.attn_levels, head_dim=m.head_dim, patch_size=m.patch_size, dropout=m.dropout or None,
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
        meta = replace(meta, image_size=size, recipe=recipe_to_yaml(recipe), extra=inherited_extra(meta.extra),
                       source=f"fine-tuned from {recipe.model.init_from}", sampling=recipe_sampling(recipe))
        return net.train(), meta
    config = recipe_net_config(recipe)
    meta = ModelMeta(
        architecture="xurdif_unet", net_config=config, schedule=recipe.diffusion.schedule,
        timesteps=recipe.diffusion.timesteps, prediction=recipe.diffusion.prediction,
        value_range=(-1.0, 1.0), image_size=size, recipe=recipe_to_yaml(recipe), source=f"trained by {recipe.name}",
        sampling=recipe_sampling(recipe),
    )
    return build_network(meta.architecture, config), meta


def exported_meta(meta: ModelMeta, state, data) -> ModelMeta:
    """The model file's metadata at export: where the run stands, and the training facts
    the model library and card show of a model whose run folder is not at hand."""
    images = len(data) if data.indexable else data.num_images  # shards: all, when known
    trained = {"seconds": state.seconds, "images": images}
    return replace(meta, step=state.step, images_seen=state.images_seen, extra={**meta.extra, "training": trained})


def recipe_sampling(recipe: Recipe) -> dict:
    """The model file's default sampler as the recipe states it (sampling.choose may replace it)."""
    from ..sampling.defaults import Sampling

    c = recipe.sampling
    return Sampling(c.sampler, c.steps, c.spacing, c.eta, sigma_min=c.sigma_min).check().to_json()


def parameter_count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def configure_backends(cfg: TrainCfg, device: torch.device) -> None:
    """Process-wide CUDA kernel choices; called once when a Trainer starts."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
    torch.backends.cudnn.allow_tf32 = cfg.tf32
    # benchmark tries several convolution algorithms per shape and keeps the fastest:
    # the choice (and so the last bits of the result) can differ between runs.
    torch.backends.cudnn.benchmark = not cfg.deterministic
    torch.backends.cudnn.deterministic = cfg.deterministic
    if cfg.deterministic:
        # cuBLAS needs a fixed workspace for repeatable reductions (must precede its first use).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=False)


def set_activation_checkpointing(net: torch.nn.Module, levels: bool | list[int]) -> None:
    """train.activation_checkpointing: only our U-Net knows its levels."""
    if levels is False or levels == []:
        return
    if not hasattr(net, "set_checkpointing"):
        raise ValueError(f"train.activation_checkpointing: {type(net).__name__} has no U-Net levels to "
                         "checkpoint (only xurdif_unet does); set it to false")
    try:
        net.set_checkpointing(levels)
    except ValueError as e:
        raise ValueError(f"train.activation_checkpointing: {e}") from None


def make_optimizer(net: torch.nn.Module, cfg: OptimCfg, device: torch.device) -> torch.optim.AdamW:
    # Fused AdamW: one kernel for all parameters; on CPU it cut the step from 50 to 10 ms (bench).
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, fused=fused)


def speed_layout(net: torch.nn.Module, cfg: TrainCfg) -> torch.nn.Module:
    """Layout switches that also suit the EMA copy: apply before copying it."""
    set_activation_checkpointing(net, cfg.activation_checkpointing)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def compile_mode(cfg: TrainCfg) -> str | None:
    """train.compile as torch.compile's mode; None: eager."""
    if cfg.compile is False:
        return None
    return "default" if cfg.compile is True else cfg.compile


def uses_cuda_graphs(cfg: TrainCfg, device: torch.device) -> bool:
    """Whether the compiled network replays CUDA graphs (torch.compile's cudagraph trees)."""
    return device.type == "cuda" and compile_mode(cfg) in ("reduce-overhead", "max-autotune")


def _mode_options(mode: str) -> dict:
    return {} if mode == "default" else {"mode": mode}


def compiles_forward(cfg: TrainCfg, world: int) -> bool:
    """Whether the step's forward with its loss terms is one compiled graph (train.compile, one process)."""
    return compile_mode(cfg) is not None and world == 1


def compile_forward(fn, cfg: TrainCfg, world: int):
    """train.compile for one process: the step's forward, loss terms and network together, as one
    graph (a backward graph with it), so the loss's kernels fuse and CUDA graphs hold them too.
    Several processes compile the network alone, inside DDP (Model)."""
    return torch.compile(fn, **_mode_options(compile_mode(cfg))) if compiles_forward(cfg, world) else fn


def compile_network(net: torch.nn.Module, cfg: TrainCfg, **options) -> torch.nn.Module:
    """train.compile: in place (Module.compile), so state_dict keys stay those of the model file.
    `options` go to torch.compile (tests pick a backend that needs no C++ compiler run)."""
    mode = compile_mode(cfg)
    if mode is not None:
        net.compile(**_mode_options(mode), **options)
    return net
