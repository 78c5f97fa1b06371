"""The guided denoiser: a Denoiser wrapped so that its x0 prediction is pushed
down the gradient of the guides' losses. Samplers see the same callable
(x_t, t) -> x0 with the same attributes and know nothing of guidance.

Default path (cheap): x0 is predicted without autograd, then each guide's
gradient with respect to x0 is taken through the picture only (never through
the U-Net), normalised to unit RMS per image, weighted, summed, and

    x0 -= scale · (hi - lo) · sqrt(ᾱ)^power · Σ_g weight_g · ĝ_g

`scale` is an RMS step in image units, so it means the same for [-1, 1] and
[-0.5, 0.5] models; sqrt(ᾱ)^power keeps early, noisy steps gentle. Because
each guide is normalised on its own, weights are absolute: weight 2 is twice
the step, whatever the scale of the guide's loss (SSIM and CLIP gradients
differ by orders of magnitude).

`through_unet` path (classifier-guidance style, as the predecessor's option a):
the same combined x0-gradient is carried back through the U-Net to x_t by one
vector-Jacobian product g_xt, and

    eps += sqrt(1 - ᾱ) · unet_lr · (hi - lo) · g_xt,   x0 recomputed from eps.

Gradients are only ever taken with torch.autograd.grad with respect to x0 or
x_t, so no parameter's .grad (U-Net or CLIP) is ever written.
"""
from __future__ import annotations

import torch

from ..seeds import derive_seed
from . import losses as L
from .clip import Clip
from .config import CLIP_GUIDES, GuidanceCfg, GuidanceError, text_prompts
from .cutouts import make_cutouts
from .images import load_image, resize, to_image_st


class Guides:
    """One job's resolved guides: prompt embeddings, target and style
    references, computed once; `losses(img)` scores a batch of pictures."""

    def __init__(self, cfg: GuidanceCfg, prompt: str, names: tuple[str, ...], clip: Clip | None,
                 device: torch.device | str):
        self.cfg, self.names, self.clip, self.device = cfg, names, clip, torch.device(device)
        self.prompt = prompt
        self.layers: tuple[int, ...] = ()
        # References are cut with their own generator, so they do not depend
        # on how many denoiser calls came before.
        ref_gen = torch.Generator().manual_seed(derive_seed(cfg.cut_seed, "references"))
        if "text" in names:
            prompts = [p for p in text_prompts(cfg, prompt) if p.weight != 0]
            self.text_emb = clip.encode_text([p.value for p in prompts])
            self.text_w = torch.tensor([p.weight for p in prompts], device=self.device)
        if "image" in names:
            prompts = [p for p in cfg.image_prompts if p.weight != 0]
            self.image_emb = torch.cat([self._reference(load_image(p.value, "image_prompts"), ref_gen)[0]
                                        for p in prompts])
            self.image_w = torch.tensor([p.weight for p in prompts], device=self.device)
        if "style" in names:
            n_blocks = clip.num_blocks()
            self.layers = cfg.style_layers or tuple(range(min(4, n_blocks)))
            if n_blocks == 0 or max(self.layers) >= n_blocks:
                raise GuidanceError(f"guidance.style_layers: {list(self.layers)} out of range; {clip.name} "
                              f"has image-tower blocks 0..{n_blocks - 1}")
            _, self.style_grams = self._reference(load_image(cfg.style, "style"), ref_gen, self.layers)
        if "target" in names:
            self.target = load_image(cfg.target, "target").to(self.device)
            self.mask = load_image(cfg.target_mask, "target_mask", grey=True).to(self.device) \
                if cfg.target_mask else None
            self._sized: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor | None]] = {}

    def _cutouts(self, img: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        c = self.cfg
        return make_cutouts(img, c.cutouts, self.clip.size, cut_min=c.cut_min, cut_max=c.cut_max,
                            aspect=c.cut_aspect, flip=c.cut_flip, generator=generator)

    @torch.no_grad()
    def _reference(self, img: torch.Tensor, generator: torch.Generator, layers: tuple[int, ...] = ()
                   ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """A reference picture seen the way the render is: through cutouts. Its
        embedding is the renormalised mean over cutouts; its Grams the mean."""
        emb, feats = self.clip.encode_image(self._cutouts(img.to(self.device), generator), layers)
        emb = torch.nn.functional.normalize(emb.mean(0, keepdim=True), dim=-1)
        return emb, [L.gram(f).mean(0, keepdim=True) for f in feats]

    def _target_at(self, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if size not in self._sized:
            mask = resize(self.mask, size) if self.mask is not None else None
            self._sized[size] = (resize(self.target, size), mask)
        return self._sized[size]

    def losses(self, img: torch.Tensor, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """img [N, 3, H, W] in [0, 1] -> {guide: loss per image [N]} (before guide weights)."""
        n = img.shape[0]
        out: dict[str, torch.Tensor] = {}
        if any(g in CLIP_GUIDES for g in self.names):
            layers = self.layers if "style" in self.names else ()
            emb, feats = self.clip.encode_image(self._cutouts(img, generator), layers)
            if "text" in self.names:
                out["text"] = L.prompt_loss(emb, self.text_emb, self.text_w, n, self.cfg.clip_loss)
            if "image" in self.names:
                out["image"] = L.prompt_loss(emb, self.image_emb, self.image_w, n, self.cfg.clip_loss)
            if "style" in self.names:
                out["style"] = L.style_loss(feats, self.style_grams, n)
        if "target" in self.names:
            target, mask = self._target_at(tuple(img.shape[-2:]))
            fn = L.ssim_loss if self.cfg.target_loss == "ssim" else L.l2_loss
            try:
                out["target"] = fn(img, target, mask)
            except ValueError as e:
                raise GuidanceError(f"guidance.target_loss: {e}") from None
        return out

    def weight(self, name: str) -> float:
        return getattr(self.cfg, f"{name}_weight")


def _unit_rms(g: torch.Tensor) -> torch.Tensor:
    return g / g.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-20)


class GuidedDenoiser:
    """Callable (x_t, t) -> x0 like the Denoiser it wraps, with its attributes."""

    needs_grad = True  # tells samplers.sample to use no_grad, not inference_mode

    def __init__(self, base, guides: Guides, cfg: GuidanceCfg):
        self.base, self.guides, self.cfg = base, guides, cfg
        self.generator = torch.Generator().manual_seed(derive_seed(cfg.cut_seed, "cutouts"))

    def __getattr__(self, name: str):
        # schedule, prediction, value_range, to_image, to_model, net, ...
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def _active(self, t: torch.Tensor) -> torch.Tensor:
        frac = t.double() / max(self.base.schedule.T - 1, 1)
        return (frac >= self.cfg.t_min - 1e-9) & (frac <= self.cfg.t_max + 1e-9)

    def _combined_grad(self, x0: torch.Tensor, img: torch.Tensor, keep_graph: bool = False) -> torch.Tensor:
        """Σ_g weight_g · (unit-RMS gradient of guide g wrt x0). keep_graph keeps
        the graph behind x0 (the U-Net's) for a later backward."""
        losses = self.guides.losses(img, self.generator)
        total = torch.zeros_like(x0)
        names = list(losses)
        for i, name in enumerate(names):
            keep = keep_graph or i < len(names) - 1
            (g,) = torch.autograd.grad(losses[name].sum(), x0, retain_graph=keep)
            total = total + self.guides.weight(name) * _unit_rms(g)
        return total

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.expand(x_t.shape[0]) if t.ndim == 0 else t
        active = self._active(t)
        if not bool(active.any()):
            return self.base(x_t, t)
        ab = self.base.schedule.ab(t).view(-1, 1, 1, 1)
        vr = self.base.value_range
        # Sampling may run under inference_mode; guidance needs a graph, so it
        # leaves it locally and works on ordinary clones of the inputs.
        if self.cfg.through_unet:
            with torch.inference_mode(False), torch.enable_grad():
                xt = x_t.detach().clone().requires_grad_(True)
                x0 = self.base(xt, t.clone())
                g_x0 = self._combined_grad(x0, to_image_st(x0, vr), keep_graph=True)
                # The raw vector-Jacobian product, not renormalised: at high noise
                # dx0/dx_t is small (~sqrt(ᾱ)), which cancels the 1/sqrt(ᾱ) below.
                (g_xt,) = torch.autograd.grad(x0, xt, grad_outputs=g_x0)
                x0 = x0.detach()
            # eps' = eps + sqrt(1-ᾱ)·lr·g  <=>  x0' = x0 - (1-ᾱ)/sqrt(ᾱ)·lr·g
            new = x0 - (1 - ab) / ab.sqrt() * (self.cfg.unet_lr * (vr[1] - vr[0])) * g_xt
        else:
            with torch.no_grad():
                x0 = self.base(x_t, t)
            with torch.inference_mode(False), torch.enable_grad():
                x0g = x0.detach().clone().requires_grad_(True)
                g = self._combined_grad(x0g, to_image_st(x0g, vr))
            step = self.cfg.scale * (vr[1] - vr[0]) * ab.sqrt().pow(self.cfg.power)
            new = x0 - step * g
        return torch.where(active.view(-1, 1, 1, 1), new, x0)

    def describe(self) -> dict:
        return describe_cfg(self.cfg, self.guides.names, self.guides.prompt, self.guides.layers)


def describe_cfg(cfg: GuidanceCfg, names: tuple[str, ...], prompt: str,
                 style_layers: tuple[int, ...] = ()) -> dict:
    """The resolved guides as a JSON-able dict (PNG metadata, manifest); {} if none."""
    if not names:
        return {}
    out: dict = {"mode": "through_unet" if cfg.through_unet else "x0",
                 "t_range": [cfg.t_min, cfg.t_max]}
    if cfg.through_unet:
        out["unet_lr"] = cfg.unet_lr
    else:
        out.update(scale=cfg.scale, power=cfg.power)
    if any(g in CLIP_GUIDES for g in names):
        out["clip"] = {"model": cfg.clip_model, "weights": cfg.clip_weights, "loss": cfg.clip_loss}
        out["cutouts"] = {"count": cfg.cutouts, "size": [cfg.cut_min, cfg.cut_max],
                          "aspect": cfg.cut_aspect, "flip": cfg.cut_flip, "seed": cfg.cut_seed}
    if "text" in names:
        out["text"] = {"weight": cfg.text_weight,
                       "prompts": [{"text": p.value, "weight": p.weight} for p in text_prompts(cfg, prompt)]}
    if "image" in names:
        out["image"] = {"weight": cfg.image_weight,
                        "prompts": [{"image": p.value, "weight": p.weight} for p in cfg.image_prompts]}
    if "target" in names:
        out["target"] = {"image": cfg.target, "weight": cfg.target_weight, "loss": cfg.target_loss,
                         "mask": cfg.target_mask or None}
    if "style" in names:
        # Unresolved (no model loaded yet) the default is "the first four blocks".
        layers = list(style_layers or cfg.style_layers or range(4))
        out["style"] = {"image": cfg.style, "weight": cfg.style_weight, "layers": layers}
    return out
