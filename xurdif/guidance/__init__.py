"""Guidance: CLIP text and image prompts, target images and Gram-matrix style,
applied by wrapping a Denoiser (see guided.py). The render tool needs two calls:

    den = build_guided_denoiser(denoiser, job.guidance, job.prompt, device, cache=clip_cache)
    meta = describe_guidance(job.guidance, job.prompt)   # JSON-able, {} if unguided

Style features come from the CLIP image tower's early blocks (not VGG19 as in
the predecessor): CLIP is the one feature network a guided render has loaded
anyway, no extra weights need fetching, and one forward pass of the cutouts
then serves text, image and style guides together. Early blocks carry the
patch-level colour and texture statistics Gram matrices are meant to match;
late blocks are semantic, which image prompts already cover.
"""
from __future__ import annotations

import torch

from .clip import Clip, load_clip, resolve_weights
from .config import (KEYS, GuidanceCfg, GuidanceError, Weighted, active_guides, parse_guidance,
                     parse_weighted, text_prompts)
from .guided import GuidedDenoiser, Guides, describe_cfg

__all__ = ["build_guided_denoiser", "describe_guidance", "GuidanceCfg", "GuidanceError", "KEYS",
           "GuidedDenoiser", "Guides", "Clip", "load_clip", "resolve_weights", "parse_guidance",
           "parse_weighted", "active_guides", "text_prompts", "Weighted"]


def build_guided_denoiser(denoiser, guidance: dict | None, prompt: str, device: torch.device | str,
                          *, cache: dict | None = None):
    """The denoiser a job samples with: `denoiser` itself (the same object) when
    no guide is active or every weight is 0, else a GuidedDenoiser around it.

    `cache`, a dict the caller keeps across jobs, holds loaded CLIP models so a
    job list loads each model once. Raises GuidanceError for bad options,
    missing pictures and CLIP weights that are not on this machine.
    """
    cfg = parse_guidance(guidance)
    names = active_guides(cfg, prompt)
    if not names:
        return denoiser
    clip = None
    if any(n in ("text", "image", "style") for n in names):
        key = (cfg.clip_model, cfg.clip_weights, str(torch.device(device)))
        if cache is not None and key in cache:
            clip = cache[key]
        else:
            clip = load_clip(cfg.clip_model, cfg.clip_weights, device)
            if cache is not None:
                cache[key] = clip
    return GuidedDenoiser(denoiser, Guides(cfg, prompt, names, clip, device), cfg)


def describe_guidance(guidance: dict | None, prompt: str) -> dict:
    """The guides a job resolves to, as a JSON-able dict; {} when unguided.
    Validates the options but loads nothing."""
    cfg = parse_guidance(guidance)
    return describe_cfg(cfg, active_guides(cfg, prompt), prompt)
