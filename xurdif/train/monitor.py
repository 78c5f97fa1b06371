"""In-training evaluation of EMA samples: KID against held-out images (or, with none
set aside, the training images) and the share of samples that copy a training image
(shift-, flip- and colour-tolerant: xurdif.evaluate.memorisation). Runs on the main
process only; its cost is bounded by eval.kid_samples and measured (`seconds`).
`best.BestModel` turns the scores into model-best.safetensors and the memorisation warning."""
from __future__ import annotations

import logging
import time

import torch

from ..diffusion.denoiser import Denoiser
from ..diffusion.samplers import sample
from ..ranges import to_uint8
from ..recipe import Recipe
from ..seeds import derive_seed
from .feed import open_source

log = logging.getLogger("xurdif.train")


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
        self.heldout_flagged = None  # the share of held-out images the copy test flags: its false flags

    def _train_images(self) -> torch.Tensor:
        x = open_source(self.data).first(self.r.eval.real_images, self.r.train.seed)
        return to_uint8(x)

    def _setup(self) -> None:
        self.train = self._train_images()
        self.train_feats = self._features(self.train, "training")
        if self.heldout is not None:
            self.heldout_feats = self._features(self.heldout.images, "held-out")
            self.heldout_flagged = self._false_flags()

    def _false_flags(self) -> float:
        """The share of held-out images (new ones of the kind) the copy test flags against the training
        images: what it reports where there is no copying. On sprites at 32 px it was 5.6 % against 50
        training images (animation frames and variants of one unit; docs/quality.md "Fifty images"),
        over a 2 % limit: the stop would then end a run for images that are not copies."""
        from ..evaluate.memorisation import copy_verdict

        share = copy_verdict(self.heldout.images, self.train)[0].fraction
        n, e = len(self.heldout.images), self.r.eval
        msg = f"evaluation: the copy test flags {share:.1%} of the {n} held-out images against the training images"
        if share >= e.memorised_max:
            log.warning("%s, at or over eval.memorised_max %.1f%%: on this data it flags new images too (near-"
                        "duplicates across the split?), so copies over the limit may not be copies%s", msg,
                        100 * e.memorised_max, " and eval.stop_on_memorised may stop the run early"
                        if e.stop_on_memorised else "")
        else:
            log.info("%s (new images: the test's own false flags)", msg)
        return share

    def _features(self, images: torch.Tensor, what: str) -> torch.Tensor:
        # Cached on disk by the images' bytes: computing them was most of the set-up's ~48 s
        # on a 2-core CPU, repeated by every run and resume on the same data.
        from ..evaluate.cache import image_features

        features, path, hit = image_features(images, self.extractor, what)
        log.info("evaluation: features of %d %s images %s %s", len(images), what,
                 "read from" if hit else "cached at", path)
        return features

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
