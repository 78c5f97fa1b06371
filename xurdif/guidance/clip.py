"""CLIP for guidance: an open_clip model from an architecture name plus local
weights, and the encoders the guides need.

Nothing is downloaded: a pretrained tag is resolved to a file already in the
local cache *before* open_clip is called, so missing weights fail at once with
a line saying what to fetch and where to put it (open_clip itself would try the
network, and retry, first).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..wording import close_matches, did_you_mean
from .config import GuidanceError

RANDOM_WEIGHTS = ("none", "random")
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz", ".ckpt")


def _check_architecture(arch: str) -> None:
    import open_clip

    names = open_clip.list_models()
    if arch not in names:
        hint = did_you_mean(close_matches(arch, names, n=3), quote=False)
        raise GuidanceError(f"guidance.clip_model: unknown open_clip architecture {arch!r}; "
                            + (f"{hint} " if hint else "") + "see open_clip.list_models()")


def _hf_cached(repo: str, filenames: list[str]) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    # Read the cache location at call time, so HF_HUB_CACHE set after import counts.
    cache_dir = os.environ.get("HF_HUB_CACHE") or None
    for name in filenames:
        hit = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
        if isinstance(hit, str) and os.path.isfile(hit):
            return hit
    return None


def resolve_weights(arch: str, weights: str) -> tuple[str | None, dict]:
    """(local checkpoint path or None for random weights, the tag's open_clip config).

    Raises GuidanceError at once when the weights are not on this machine.
    """
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    _check_architecture(arch)
    if weights.lower() in RANDOM_WEIGHTS:
        return None, {}
    if os.sep in weights or "/" in weights or weights.endswith(_WEIGHT_SUFFIXES) or os.path.exists(weights):
        if not os.path.isfile(weights):
            raise GuidanceError(
                f"guidance.clip_weights: file {weights!r} does not exist; put an open_clip checkpoint "
                f"for {arch} there, or give a pretrained tag already in the local cache, or 'none' "
                f"for random weights")
        return weights, {}
    tags = list_pretrained_tags_by_model(arch)
    if weights not in tags:
        valid = ", ".join(tags) if tags else "none known for this architecture"
        raise GuidanceError(f"guidance.clip_weights: {weights!r} is neither a file nor a pretrained tag "
                            f"of {arch}; tags: {valid}")
    cfg = get_pretrained_cfg(arch, weights)
    if cfg.get("hf_hub"):
        # open_clip's convention: "org/repo/" means the default file names,
        # "org/repo/file.bin" that file; a .safetensors twin is preferred.
        hub = cfg["hf_hub"]
        if hub.endswith("/"):
            repo, names = hub.rstrip("/"), [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        else:
            repo, name = os.path.split(hub)
            names = [name[:-4] + ".safetensors", name] if name.endswith((".bin", ".pth")) else [name]
        hit = _hf_cached(repo, names)
        if hit:
            return hit, cfg
        how = (f"on a connected machine run `hf download {repo} {names[0]}` and copy the Hugging Face "
               f"cache (~/.cache/huggingface/hub) here")
    else:
        target = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(cfg["url"]))
        if os.path.isfile(target):
            return target, cfg
        how = f"download {cfg['url']} and put it at {target}"
    raise GuidanceError(
        f"guidance.clip_weights: CLIP weights {arch}/{weights} are not on this machine and nothing is "
        f"downloaded at render time; {how}, or pass a downloaded checkpoint's path as clip_weights")


@dataclass
class Clip:
    """An open_clip model ready for guidance: frozen, eval mode, with its
    tokenizer, input size and normalisation."""
    model: nn.Module
    tokenizer: object
    size: tuple[int, int]  # CLIP's input (H, W)
    mean: torch.Tensor  # [1, 3, 1, 1]
    std: torch.Tensor
    name: str = ""
    _blocks: list[nn.Module] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def encode_image(self, img: torch.Tensor, layers: tuple[int, ...] = ()
                     ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """img [N, 3, *size] in [0, 1] -> (unit embeddings [N, D], features of
        the requested image-tower blocks, each [N, tokens, channels])."""
        feats: list[torch.Tensor] = []
        with self._hooks(layers, feats):
            emb = self.model.encode_image((img - self.mean) / self.std)
        return nn.functional.normalize(emb.float(), dim=-1), feats

    def num_blocks(self) -> int:
        return len(self._blocks)

    @contextmanager
    def _hooks(self, layers: tuple[int, ...], out: list[torch.Tensor]):
        if not layers:
            yield
            return
        visual = self.model.visual
        batch_first = getattr(getattr(visual, "transformer", None), "batch_first", True)

        def grab(_mod, _inp, o):
            if isinstance(o, tuple):
                o = o[0]
            if o.ndim == 4:  # a ResNet stage: [N, C, h, w] -> [N, h*w, C]
                o = o.flatten(2).transpose(1, 2)
            elif not batch_first:  # a transformer run sequence-first: [L, N, D]
                o = o.transpose(0, 1)
            if o.ndim == 3 and o.shape[1] > 1 and hasattr(visual, "class_embedding"):
                o = o[:, 1:]  # the class token is a summary, not a place in the picture
            out.append(o.float())

        handles = [self._blocks[i].register_forward_hook(grab) for i in layers]
        try:
            yield
        finally:
            for h in handles:
                h.remove()


def _feature_blocks(visual: nn.Module) -> list[nn.Module]:
    """The image tower's blocks whose outputs Gram style reads, shallow first."""
    if hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):
        return list(visual.transformer.resblocks)
    if all(hasattr(visual, f"layer{i}") for i in range(1, 5)):
        return [getattr(visual, f"layer{i}") for i in range(1, 5)]
    return []


def load_clip(arch: str, weights: str, device: torch.device | str = "cpu") -> Clip:
    """Build an open_clip model from local weights (or random ones for "none")."""
    import open_clip

    path, tag_cfg = resolve_weights(arch, weights)
    # Preprocessing and QuickGELU follow the tag's config, which open_clip only
    # applies itself when it is given the tag (and would then go online).
    force_pre = {k: tag_cfg[k] for k in ("mean", "std") if k in tag_cfg}
    try:
        model = open_clip.create_model(
            arch, pretrained=path, device=device, pretrained_text=False,
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            force_preprocess_cfg=force_pre or None)
    except RuntimeError as e:
        raise GuidanceError(f"guidance.clip_weights: cannot load {path!r} into {arch}: "
                            f"{str(e).splitlines()[0]}") from None
    model.eval().requires_grad_(False)
    visual = model.visual
    size = visual.image_size if isinstance(visual.image_size, tuple) else (visual.image_size,) * 2
    mean = torch.tensor(visual.image_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(visual.image_std, device=device).view(1, 3, 1, 1)
    return Clip(model, open_clip.get_tokenizer(arch), tuple(int(s) for s in size), mean, std,
                name=f"{arch}/{weights}", _blocks=_feature_blocks(visual))
