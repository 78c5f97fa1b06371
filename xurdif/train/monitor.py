"""In-training KID of EMA samples against the training images, with the share of
memorised samples beside it (a score against the training set means little without
it). Runs on the main process only; its cost is bounded by eval.kid_samples."""
from __future__ import annotations

import torch

from ..diffusion.denoiser import Denoiser
from ..diffusion.samplers import sample
from ..recipe import Recipe
from ..seeds import derive_seed


class KidMonitor:
    def __init__(self, recipe: Recipe, data, device: torch.device):
        from ..evaluate import InceptionFeatures

        self.r = recipe
        self.data = data
        self.device = device
        self.extractor = InceptionFeatures(device=device)
        self.real = None  # uint8 training images, loaded on first use
        self.real_feats = None

    def _real_images(self) -> torch.Tensor:
        n = self.r.eval.real_images
        if self.data.indexable:
            idx = list(range(min(n, len(self.data))))
            x = self.data.get(idx, [0] * len(idx))
        else:
            batches, have = [], 0
            for b in self.data.stream(64, self.r.train.seed):
                batches.append(b)
                have += b.shape[0]
                if have >= n:
                    break
            x = torch.cat(batches)[:n]
        return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)

    @torch.no_grad()
    def __call__(self, ema: torch.nn.Module, schedule, meta, samples: int | None = None,
                 steps: int | None = None) -> dict[str, float]:
        """Scores of `samples` (default eval.kid_samples) samples of `steps` (eval.kid_steps) sampler steps."""
        from ..evaluate import kid, pixel_memorisation

        if self.real is None:
            self.real = self._real_images()
            self.real_feats = self.extractor(self.real)
        e = self.r.eval
        den = Denoiser(ema, schedule, meta.prediction, meta.value_range)
        h, w = meta.image_size
        g = torch.Generator().manual_seed(derive_seed(self.r.samples.seed, "kid"))
        fake = torch.cat([
            den.to_image(sample(den, (b.numel(), 3, h, w), sampler="dpmpp_2m", steps=steps or e.kid_steps,
                                generator=g, device=self.device)).float().cpu()
            for b in torch.arange(samples or e.kid_samples).split(64)
        ])
        mean, std = kid(self.real_feats, self.extractor(fake))
        memo, _ = pixel_memorisation(fake, self.real.float() / 255)
        return {"kid": mean, "kid_std": std, "memorised": memo.fraction}
