"""In-training evaluation of EMA samples: KID against held-out images (or, with none
set aside, the training images) and the share of samples that copy a training image
(shift-, flip- and colour-tolerant: xurdif.evaluate.memorisation). Runs on the main
process only; its cost is bounded by eval.kid_samples and measured (`seconds`)."""
from __future__ import annotations

import time

import torch

from ..diffusion.denoiser import Denoiser
from ..diffusion.samplers import sample
from ..recipe import Recipe
from ..seeds import derive_seed

# eval.time_share's first measurement: after the LR warm-up and this much training,
# so the first score is of a model that has begun to learn.
FIRST_EVAL_AFTER_S = 60.0


class KidMonitor:
    def __init__(self, recipe: Recipe, data, device: torch.device, heldout=None):
        """heldout: a xurdif.data.holdout.HeldOut (KID is measured against its images) or None."""
        from ..evaluate import InceptionFeatures

        self.r = recipe
        self.data = data
        self.heldout = heldout
        self.device = device
        self.extractor = InceptionFeatures(device=device)
        self.train = None  # uint8 training images, loaded on first use
        self.train_feats = None
        self.heldout_feats = None
        self.seconds = None  # what the last measurement took, without the one-off set-up
        self.picture = None  # uint8 [3, H, W]: the last samples most like a training image, beside it

    def _train_images(self) -> torch.Tensor:
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

    def _setup(self) -> None:
        self.train = self._train_images()
        self.train_feats = self.extractor(self.train)
        if self.heldout is not None:
            self.heldout_feats = self.extractor(self.heldout.images)

    def reference(self) -> tuple[torch.Tensor, str]:
        """KID's reference features and what they are of."""
        if self.train is None:
            self._setup()
        if self.heldout_feats is not None:
            return self.heldout_feats, f"{self.heldout_feats.shape[0]} held-out images"
        return self.train_feats, f"{self.train_feats.shape[0]} training images"

    @torch.no_grad()
    def __call__(self, ema: torch.nn.Module, schedule, meta, samples: int | None = None,
                 steps: int | None = None) -> dict[str, float]:
        """Scores of `samples` (default eval.kid_samples) samples of `steps` (eval.kid_steps) sampler steps:
        kid (against held-out images when there are any), kid_std, kid_train (against the
        training images), memorised (either test), memorised_robust and memorised_pixel."""
        from ..evaluate import kid, memorisation_picture
        from ..evaluate.memorisation import copy_verdict

        if self.train is None:
            self._setup()
        started = time.perf_counter()
        e = self.r.eval
        den = Denoiser(ema, schedule, meta.prediction, meta.value_range)
        h, w = meta.image_size
        g = torch.Generator().manual_seed(derive_seed(self.r.samples.seed, "kid"))
        fake = torch.cat([
            den.to_image(sample(den, (b.numel(), 3, h, w), sampler="dpmpp_2m", steps=steps or e.kid_steps,
                                generator=g, device=self.device)).float().cpu()
            for b in torch.arange(samples or e.kid_samples).split(64)
        ])
        fake_feats = self.extractor(fake)
        kid_train, kid_train_std = kid(self.train_feats, fake_feats)
        scores = {"kid": kid_train, "kid_std": kid_train_std, "kid_train": kid_train}
        if self.heldout_feats is not None:
            scores["kid"], scores["kid_std"] = kid(self.heldout_feats, fake_feats)
        memo, rows, robust, plain = copy_verdict(fake, self.train)
        scores["memorised"] = memo.fraction
        scores["memorised_robust"], scores["memorised_pixel"] = robust.fraction, plain.fraction
        self.picture = memorisation_picture(fake, rows, memo, count=6)
        self.seconds = time.perf_counter() - started
        return scores
