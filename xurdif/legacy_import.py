"""Convert urdiffusion / xurdif checkpoints (model-N.pt) into our model file.

A legacy checkpoint is a pickled dict {step, model, ema, scaler, mults, mtype,
pred}; `model` and `ema` are state dicts of the whole diffusion wrapper: the
network under `denoise_fn.` plus the wrapper's 12 schedule buffers. The
originals loaded these with strict=False, so a mismatch passed silently; here
every missing or unexpected key is an error.
"""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import torch

from .models import build_network
from .weights import ModelMeta, save_model_file

# Legacy mtype (also our registry name, see xurdif/models/__init__.py) -> the
# first time-MLP layer, [4·dim, dim]: every original was built with dim=64, but
# the width is readable from the weights, so we take it from there.
WIDTH_KEYS = {
    "tinyunet_with_attention3": "time_mlp.0.weight",  # xurdif
    "unet0": "mlp.0.weight",  # urdiffusion, from here on
    "unet1": "time_mlp.1.weight",
    "unet2": "time_mlp.1.weight",
    "unetcn0": "time_mlp.1.weight",
}
SUPPORTED = tuple(WIDTH_KEYS)
# Named by the trainers (urdiffusion: unet0k5; xurdif: the rest) but their network
# files were never published, so no checkpoint of them can have been trained.
NEVER_PUBLISHED = ("unet0k5", "tinyunet", "tinyunet_with_attention", "unet2d")
PREDICTIONS = ("eps", "x0")  # the originals had no v-prediction
PREFIX = "denoise_fn."
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
)
# Both trainers' --imageSize default.
DEFAULT_IMAGE_SIZE = 512


class LegacyImportError(ValueError):
    """A checkpoint that cannot be imported; the message is one line for the user."""


def read_checkpoint(path: Path, trust_pickle: bool = False) -> dict:
    if not path.is_file():
        raise LegacyImportError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        if trust_pickle:
            raise LegacyImportError(f"{path}: cannot unpickle: {e}") from e
        # torch's message is a page long; the user needs one line and the way out.
        raise LegacyImportError(
            f"{path}: holds objects that need full unpickling, which can run arbitrary code; "
            "rerun with --trust-pickle only if you trust where this file came from"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:  # truncated or not a torch file at all
        raise LegacyImportError(f"{path}: not a readable torch checkpoint ({str(e).splitlines()[0]})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise LegacyImportError(
            f"{path}: not an urdiffusion/xurdif checkpoint (expected a dict with keys "
            "step, model, ema, mults, mtype)"
        )
    return ckpt


def split_state(state: dict, path: Path, which: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(network weights without the `denoise_fn.` prefix, schedule buffers)."""
    net, buffers = {}, {}
    for key, value in state.items():
        if key.startswith(PREFIX):
            net[key[len(PREFIX):]] = value
        elif key in SCHEDULE_BUFFERS:
            buffers[key] = value
        else:
            raise LegacyImportError(
                f"{path}: unexpected key {key!r} in '{which}' (neither a '{PREFIX}' weight nor a schedule buffer)"
            )
    return net, buffers


def load_strict(net: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, which: str, mtype: str) -> dict:
    """Load `state` into `net` requiring the same keys and shapes; return net's float32 state."""
    expected = net.state_dict()
    for key in expected:
        if key not in state:
            raise LegacyImportError(f"{path}: missing key {PREFIX + key!r} in '{which}' for {mtype}")
    for key, value in state.items():
        if key not in expected:
            raise LegacyImportError(f"{path}: unexpected key {PREFIX + key!r} in '{which}' for {mtype}")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise LegacyImportError(
                f"{path}: key {PREFIX + key!r} in '{which}' has shape {tuple(value.shape)}, "
                f"{mtype} with these mults expects {tuple(expected[key].shape)}"
            )
    net.load_state_dict(state, strict=True)  # casts fp16 weights to the net's float32
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def net_config(mtype: str, ckpt: dict, weights: dict[str, torch.Tensor], path: Path) -> dict:
    mults = ckpt.get("mults")
    if mults is None:
        raise LegacyImportError(f"{path}: no 'mults' stored in the checkpoint; pass them with --mults")
    first = WIDTH_KEYS[mtype]
    if first not in weights:
        raise LegacyImportError(f"{path}: missing key {PREFIX + first!r} in 'model' for {mtype}")
    return {"dim": int(weights[first].shape[1]), "dim_mults": [int(m) for m in mults]}


def convert(ckpt: dict, path: Path, image_size: int = DEFAULT_IMAGE_SIZE) -> tuple[ModelMeta, dict, dict | None]:
    """A legacy checkpoint dict -> (meta, model state, ema state or None)."""
    mtype = ckpt.get("mtype")
    if mtype in NEVER_PUBLISHED:
        raise LegacyImportError(
            f"{path}: architecture (mtype) {mtype!r} was never published, so it cannot be imported; "
            f"supported: {', '.join(SUPPORTED)}"
        )
    if mtype not in SUPPORTED:
        raise LegacyImportError(
            f"{path}: unsupported architecture (mtype) {mtype!r}; supported: {', '.join(SUPPORTED)}"
        )
    pred = ckpt.get("pred") or "eps"  # urdiffusion stored none: it only trained eps
    if pred not in PREDICTIONS:
        raise LegacyImportError(f"{path}: unknown prediction 'pred' {pred!r}; valid: {', '.join(PREDICTIONS)}")

    model_w, buffers = split_state(ckpt["model"], path, "model")
    config = net_config(mtype, ckpt, model_w, path)
    try:
        net = build_network(mtype, config)
    except ValueError as e:  # mults the original network could not have been built with
        raise LegacyImportError(f"{path}: {e}") from None
    model_state = load_strict(net, model_w, path, "model", mtype)
    ema_state = None
    if ckpt.get("ema") is not None:
        ema_w, _ = split_state(ckpt["ema"], path, "ema")
        ema_state = load_strict(net, ema_w, path, "ema", mtype)

    if "betas" not in buffers:
        raise LegacyImportError(f"{path}: missing schedule buffer 'betas' in 'model'; cannot tell the number of timesteps")
    meta = ModelMeta(
        architecture=mtype,
        net_config=config,
        # The only schedule either trainer had, in its t/(T+1) variant (see schedule.py).
        schedule="cosine_urdiffusion",
        timesteps=int(buffers["betas"].shape[0]),
        prediction=pred,
        value_range=(-0.5, 0.5),  # both trained on ToTensor() - 0.5
        image_size=(image_size, image_size),
        source=f"imported from {path.name}",
        extra={"legacy_step": int(ckpt.get("step", 0) or 0)},
    )
    return meta, model_state, ema_state


def import_checkpoint(src: str | Path, out: str | Path, *, trust_pickle: bool = False,
                      image_size: int = DEFAULT_IMAGE_SIZE, mults: list[int] | None = None) -> ModelMeta:
    src = Path(src)
    ckpt = read_checkpoint(src, trust_pickle)
    if mults is not None:
        ckpt = {**ckpt, "mults": mults}
    meta, model_state, ema_state = convert(ckpt, src, image_size)
    save_model_file(out, meta, model_state, ema_state)
    return meta


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="import_urdiffusion.py",
        description="Convert an urdiffusion or xurdif checkpoint (model-N.pt) into an xurdif model "
                    "file (.safetensors) that tools/sample.py and model.init_from can use. "
                    f"Supported architectures (mtype): {', '.join(SUPPORTED)}; "
                    f"{', '.join(NEVER_PUBLISHED)} were never published and cannot be imported.",
    )
    p.add_argument("checkpoint", help="the legacy checkpoint, e.g. train/model-120.pt")
    p.add_argument("--out", required=True, help="where to write the .safetensors model file")
    p.add_argument("--size", type=int, default=DEFAULT_IMAGE_SIZE,
                   help=f"image side the model was trained at (default {DEFAULT_IMAGE_SIZE}, the trainers' default)")
    p.add_argument("--mults", type=int, nargs="+", default=None,
                   help="channel multipliers, only for old checkpoints that did not store them")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow full unpickling for checkpoints that need it; this can run code "
                        "from the file, so use it only for files you trust")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.size <= 0:
        raise SystemExit(f"import_urdiffusion: --size must be a positive int, got {args.size}")
    try:
        meta = import_checkpoint(args.checkpoint, args.out, trust_pickle=args.trust_pickle,
                                 image_size=args.size, mults=args.mults)
    except LegacyImportError as e:
        raise SystemExit(f"import_urdiffusion: {e}") from None
    print(f"wrote {args.out}: {meta.architecture} {meta.net_config}, prediction {meta.prediction}, "
          f"{meta.timesteps} timesteps, value range {list(meta.value_range)}")
    return 0
