"""The recipe schema: typed dataclasses are the single source of truth for every
setting, its default, its allowed range and its one-line explanation."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

# A field with its default, range (min/max) and one-line doc. Recipe fields may also say
# `safe=True`: a resumed run may change it (xurdif/train/cli.py), as it alters neither the
# weights so far nor the meaning of the saved optimizer state and data position.
from ..options import opt
from ..wording import OptionError


@dataclass(frozen=True)
class DataCfg:
    source: Literal["folder", "hf", "shards"] = opt("folder", doc="where images come from")
    path: str = opt("", doc="image folder (source: folder), relative to the working directory")
    size: int = opt(64, min=8, max=4096, doc="training resolution in pixels (square)")
    crop: Literal["center", "random"] = opt("center", doc="crop after the aspect-preserving resize")
    hflip: bool = opt(False, doc="random horizontal flip")
    background: str = opt("#ffffff", doc="colour transparent pixels are composited on")
    max_image_pixels: int = opt(89_478_485, min=1, doc="larger images are skipped (decompression bombs)")
    cache_max_images: int = opt(20000, min=0, doc="decode at most this many images once into memory")
    hf_dataset: str = opt("", doc="source: hf — a saved dataset folder, an imagefolder or a cached hub name")
    hf_split: str = opt("train", doc="source: hf — the split to read")
    image_column: str = opt("image", doc="source: hf — the column holding images")
    shards: str = opt("", doc="source: shards — tar paths or brace pattern, e.g. data/s-{000..009}.tar")
    shuffle_buffer: int = opt(1000, min=0, doc="source: shards — shuffle buffer size")
    allow_pipe: bool = opt(False, doc="source: shards — allow pipe: URLs (runs a shell command)")
    allow_pickle: bool = opt(False, doc="source: shards — allow pickled members (can run code)")
    num_workers: int = opt(0, min=0, max=64, doc="loader worker processes (every source)", safe=True)


@dataclass(frozen=True)
class ModelCfg:
    preset: Literal["tiny", "small", "base", "large"] = opt("small", doc="U-Net size preset")
    base_width: Optional[int] = opt(None, min=8, doc="channels at full resolution (overrides preset)")
    mults: Optional[list[int]] = opt(None, doc="channel multiplier per level (overrides preset)")
    blocks_per_level: Optional[int] = opt(None, min=1, max=8, doc="residual blocks per level")
    attn_levels: Optional[list[int]] = opt(None, doc="levels with self-attention (default: lowest two)")
    head_dim: Optional[int] = opt(None, min=8, doc="attention head width")
    patch_size: Optional[int] = opt(None, min=1, max=8, doc="fold NxN pixels into channels before the first "
                                    "conv (overrides preset; tiny/small: 2, base/large: 1)")
    dropout: float = opt(0.0, min=0.0, max=0.9, doc="dropout in residual blocks")
    init_from: str = opt("", doc="start from the weights of a model file (.safetensors), e.g. an import")
    license: str = opt("", doc="the model's licence, e.g. cc-by-4.0 or mit, for the model card (README.md "
                       "beside model.safetensors; \"\" = not stated)", safe=True)


@dataclass(frozen=True)
class DiffusionCfg:
    schedule: Literal["cosine", "linear"] = opt("cosine", doc="noise schedule")
    timesteps: int = opt(1000, min=10, max=100000, doc="number of discrete timesteps T")
    prediction: Literal["eps", "x0", "v", "edm"] = opt(
        "eps", doc="what the network predicts; edm = Karras et al. 2022 preconditioning (c_in, c_skip, c_out)")
    noise_dist: Literal["auto", "uniform", "lognormal"] = opt(
        "auto", doc="training noise levels: uniform timesteps, or EDM's log-normal sigma (auto: lognormal for edm)")
    p_mean: float = opt(-1.2, min=-10.0, max=10.0, doc="lognormal: mean of ln(sigma)")
    p_std: float = opt(1.2, min=0.01, max=10.0, doc="lognormal: standard deviation of ln(sigma)")

    @property
    def lognormal(self) -> bool:
        return self.noise_dist == "lognormal" or (self.noise_dist == "auto" and self.prediction == "edm")


@dataclass(frozen=True)
class LossCfg:
    l2: float = opt(1.0, min=0.0, doc="weight of mean squared error")
    l1: float = opt(0.0, min=0.0, doc="weight of mean absolute error")
    edge_l1: float = opt(0.0, min=0.0, doc="weight of edge-weighted L1 on the clean image")
    ssim: float = opt(0.0, min=0.0, doc="weight of 1 - SSIM on the clean image")
    ms_ssim: float = opt(0.0, min=0.0, doc="weight of 1 - MS-SSIM (needs size >= 161)")
    space: Literal["target", "x0"] = opt("target", doc="l1/l2 on the network's target or on the clean image")
    edge_threshold: float = opt(0.08, min=0.0, doc="Sobel magnitude (on [0,1] grey) that counts as edge")
    edge_weight: float = opt(4.0, min=0.0, doc="extra weight on edge pixels: 1 + edge_weight")
    min_snr_gamma: Optional[float] = opt(None, min=0.0, doc="min-SNR-gamma loss weighting (e.g. 5)")


@dataclass(frozen=True)
class AugmentCfg:
    """Non-leaky augmentation (EDM, StyleGAN2-ADA): each kind is applied with probability p
    and its parameters are given to the network as conditioning, zero at sampling."""
    p: float = opt(0.0, min=0.0, max=1.0, doc="probability of each enabled augmentation (0 = off)")
    xflip: bool = opt(True, doc="mirror left-right")
    yflip: bool = opt(False, doc="mirror top-bottom")
    rotate90: bool = opt(True, doc="rotate by a multiple of 90 degrees")
    translate: float = opt(0.125, min=0.0, max=0.5, doc="integer shift up to this fraction of the size (0 = off)")
    scale: float = opt(0.2, min=0.0, max=2.0, doc="isotropic scaling, std of log2(scale) (0 = off)")
    color: bool = opt(True, doc="brightness, contrast and saturation changes")


@dataclass(frozen=True)
class OptimCfg:
    lr: float = opt(2e-4, min=0.0, max=1.0, doc="peak learning rate", safe=True)
    betas: list[float] = opt([0.9, 0.99], doc="AdamW betas")
    eps: float = opt(1e-8, min=0.0, doc="AdamW epsilon")
    weight_decay: float = opt(0.0, min=0.0, doc="AdamW weight decay")
    grad_clip: float = opt(1.0, min=0.0, doc="clip gradient norm (0 = off)")
    warmup_images: int = opt(0, min=0, doc="linear LR warmup length in images seen", safe=True)
    lr_schedule: Literal["constant", "cosine"] = opt("constant", doc="after warmup", safe=True)
    min_lr_ratio: float = opt(0.1, min=0.0, max=1.0, doc="cosine: final lr as a fraction of peak", safe=True)


@dataclass(frozen=True)
class TrainCfg:
    batch_size: int = opt(16, min=1, doc="images per process per micro-batch", safe=True)
    grad_accum: int = opt(1, min=1, doc="micro-batches per optimizer step", safe=True)
    images: Optional[int] = opt(None, min=1, doc="training length in images seen (or set steps)", safe=True)
    steps: Optional[int] = opt(None, min=1, doc="training length in optimizer steps (or set images)", safe=True)
    time: Optional[str] = opt(None, doc="training length as a wall-clock budget: 90s, 30m, 8h, 1h30m; the "
                              "length in images is fixed from the measured speed (or set images/steps)", safe=True)
    time_probe_steps: Optional[int] = opt(None, min=1, doc="train.time: measure speed over this many steps "
                                          "(default: the first minute, at most a tenth of the budget)", safe=True)
    mixed_precision: Literal["no", "fp16", "bf16"] = opt("no", doc="autocast precision")
    seed: int = opt(0, min=0, doc="every random draw derives from (seed, images seen)")
    output_dir: str = opt("", doc="run folder (default runs/<recipe name>)", safe=True)
    max_nonfinite: int = opt(20, min=1, doc="stop after this many non-finite steps in a row", safe=True)
    # Speed switches, safe to change on resume: they change how the same computation runs, not what it means.
    compile: bool | Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = opt(
        False, doc="torch.compile the network (the first steps wait for the compiler): true = 'default'; "
        "'reduce-overhead' also replays its forward and backward as CUDA graphs (small presets on a GPU: "
        "launch-bound otherwise)", safe=True)
    channels_last: bool = opt(False, doc="NHWC activations and weights (faster convolutions on GPU)", safe=True)
    activation_checkpointing: bool | list[int] = opt(
        False, doc="recompute these U-Net levels' activations in backward (true = all, or e.g. [0, 1]): "
        "less memory, ~30 % more compute", safe=True)
    tf32: bool = opt(True, doc="CUDA: TF32 for fp32 matmuls and convolutions", safe=True)
    deterministic: bool = opt(False, doc="CUDA: deterministic kernels, cudnn.benchmark off (bitwise-repeatable "
                              "runs; slower)", safe=True)


@dataclass(frozen=True)
class EmaCfg:
    kind: Literal["warmup", "power", "off"] = opt("warmup", doc="EMA decay rule")
    decay: float = opt(0.999, min=0.0, max=1.0, doc="warmup: maximum decay")
    warmup_power: float = opt(0.75, min=0.0, doc="warmup: decay = 1 - (1 + step)^-power, capped")
    std: float = opt(0.05, min=0.001, max=0.28, doc="power: relative EMA length (EDM2 sigma_rel)")
    posthoc_stds: list[float] = opt([], min=0.001, max=0.28, doc="post-hoc EMA: relative stds of the extra "
                                    "power EMAs tracked for xurdif-ema, e.g. [0.05, 0.1] (empty = off)")
    snapshot_every_images: int = opt(0, min=0, doc="post-hoc EMA: snapshot them into <run>/ema-snapshots "
                                     "every N images seen (0 = with every checkpoint)", safe=True)
    snapshot_dtype: Literal["fp32", "fp16"] = opt("fp32", doc="post-hoc EMA: precision of the snapshots", safe=True)


@dataclass(frozen=True)
class CheckpointCfg:
    every_steps: int = opt(1000, min=1, doc="save a checkpoint every N optimizer steps")
    keep_last: int = opt(3, min=1, doc="keep this many newest checkpoints")
    keep_every: int = opt(0, min=0, doc="also keep every N-th step as a milestone (0 = none)")


@dataclass(frozen=True)
class LogCfg:
    every_steps: int = opt(10, min=1, doc="TensorBoard scalars every N steps")
    tensorboard: bool = opt(True, doc="write TensorBoard logs into <run>/tb")


# xurdif/diffusion/samplers.py SAMPLERS and spacing.py SPACINGS (tests/test_recipe.py keeps them equal).
SamplerName = Literal["ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m", "edm"]


@dataclass(frozen=True)
class SamplesCfg:
    every_steps: int = opt(500, min=0, doc="EMA sample grid every N steps (0 = only at the end)")
    n: int = opt(16, min=1, max=256, doc="images in the grid")
    steps: Optional[int] = opt(None, min=1, max=1000, doc="network evaluations (null: sampling.steps)")
    sampler: Literal["auto", "ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m", "edm"] = opt(
        "auto", doc="sampler for the grid (auto: the model's default, the sampling section)")
    seed: int = opt(1234, min=0, doc="fixed noise seed, so grids are comparable over time")


@dataclass(frozen=True)
class SamplingCfg:
    sampler: SamplerName = opt("dpmpp_2m", doc="the model's default sampler, recorded in its file: what "
                               "tools/sample.py, the studio and the grids use when a job names none")
    steps: int = opt(20, min=1, max=1000, doc="its network evaluations per image (dpmpp_2m/karras at 20 matched "
                     "ddim 50 on x0 and eps models but not on a v model: docs/benchmarks.md \"Samplers\"; "
                     "sampling.choose measures it)")
    spacing: Literal["uniform", "logsnr", "karras"] = opt("karras", doc="where its steps fall "
                                                           "(xurdif/diffusion/spacing.py)")
    eta: float = opt(0.0, min=0.0, max=1.0, doc="its eta (ddim, dpmpp_2m_sde) or churn (edm)")
    sigma_min: float = opt(0.0, min=0.0, max=80.0, doc="logsnr/karras: the noise level of its last step "
                           "(0 = the schedule's smallest)")
    choose: bool = opt(False, doc="at the end of training, render sampling.samples images with each candidate "
                       "(xurdif/sampling/choose.py) at sampling.steps evaluations, score KID against the held-out "
                       "images (else the training images) and record the winner instead")
    samples: int = opt(200, min=16, max=10000, doc="images per candidate when choosing")
    fit: bool = opt(True, doc="when choosing, also fit a step schedule to the model (xurdif/sampling/fit.py; "
                    "recorded in its file as spacing 'fitted') and let dpmpp_2m on it compete")


@dataclass(frozen=True)
class EvalCfg:
    kid_every_steps: int = opt(0, min=0, doc="in-training KID of EMA samples every N steps (0 = off)")
    kid_samples: int = opt(64, min=8, max=10000, doc="EMA samples per KID measurement (bounds its cost)")
    kid_steps: int = opt(20, min=1, max=1000, doc="sampler steps for those samples")
    time_share: float = opt(0.0, min=0.0, max=0.5, doc="evaluate as often as keeps evaluation under this share "
                            "of the run's time (e.g. 0.03), measured as it runs; 0 = only every kid_every_steps")
    real_images: int = opt(1000, min=8, doc="training images the samples are checked for copies against "
                           "(and KID's reference when nothing is held out)")
    holdout: float = opt(0.0, min=0.0, max=0.5, doc="share of the images set aside, never trained on, for KID "
                         "(folder and hf sources; chosen by a hash of each file's path, so stable)")
    holdout_path: str = opt("", doc="a folder of images of the same kind never trained on, for KID "
                            "(instead of holdout; any source)")
    memorised_max: float = opt(0.05, min=0.0, max=1.0, doc="model-best.safetensors only from measurements "
                               "whose memorised share is below this; above it, warn once", safe=True)
    stop_on_memorised: bool = opt(False, doc="end the run (checkpoint saved) once memorisation exceeds "
                                  "eval.memorised_max", safe=True)


@dataclass(frozen=True)
class Recipe:
    name: str = opt("", doc="run name (default: the recipe file's stem)", safe=True)
    data: DataCfg = field(default_factory=DataCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    diffusion: DiffusionCfg = field(default_factory=DiffusionCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    augment: AugmentCfg = field(default_factory=AugmentCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    ema: EmaCfg = field(default_factory=EmaCfg)
    checkpoint: CheckpointCfg = field(default_factory=CheckpointCfg, metadata={"safe": True})
    log: LogCfg = field(default_factory=LogCfg, metadata={"safe": True})
    samples: SamplesCfg = field(default_factory=SamplesCfg, metadata={"safe": True})
    sampling: SamplingCfg = field(default_factory=SamplingCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)

    @property
    def run_dir(self) -> Path:
        return Path(self.train.output_dir or Path("runs") / self.name)


class RecipeError(OptionError):
    """All problems of a recipe, one per line."""
