"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models", section 3 and appendix C).

Training tracks a few power-function EMAs (ema.posthoc_stds) and writes their
values now and then into <run>/ema-snapshots/. A power-function EMA at time t
(images seen) averages the weights w(tau) with the profile

    p_t(tau) = (g + 1) tau^g / t^(g + 1),  0 <= tau <= t,

where the exponent g follows from the relative std (see ema.power_exponent).
Every snapshot is such a profile; any other profile, of another std at another
time, is approximated by the linear combination of snapshots whose profiles are
closest to it in L2 (least squares on the Gram matrix of profile inner products).
The same combination applied to the snapshot weights gives the reconstructed EMA.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from ..atomic import atomic_write
from .ema import make_ema, power_decay, power_exponent, update_ema_if

log = logging.getLogger(__name__)
SNAPSHOT_DIR = "ema-snapshots"
SNAPSHOT_NAME = re.compile(r"^images-(\d{10,})\.safetensors$")


def std_key(std: float) -> str:
    """Tensor-name prefix of one tracked EMA, stable across float printing."""
    return f"std-{std:.4f}"


# ---------------------------------------------------------------- tracking


class PosthocEmas:
    """The power-function EMAs of ema.posthoc_stds, fp32 modules beside the live net."""

    def __init__(self, net: torch.nn.Module, stds: list[float], device: torch.device | str = "cpu"):
        self.stds = [float(s) for s in stds]
        self.emas = [make_ema(net).to(device) for _ in self.stds]

    def update(self, net: torch.nn.Module, images_before: int, images_after: int,
               finite: torch.Tensor | None = None) -> None:
        """One step of every EMA; none where the 0-dim bool `finite` is false (a skipped step)."""
        if finite is None:
            finite = torch.tensor(True, device=next(self.emas[0].parameters()).device)
        for std, ema in zip(self.stds, self.emas):
            update_ema_if(ema, net, power_decay(std, images_before, images_after), finite)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{std_key(s)}.{k}": v for s, e in zip(self.stds, self.emas) for k, v in e.state_dict().items()}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        for s, e in zip(self.stds, self.emas):
            prefix = std_key(s) + "."
            mine = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if not mine:
                raise ValueError(f"checkpoint holds no post-hoc EMA of std {s} (ema.posthoc_stds changed?)")
            e.load_state_dict(mine)

    def resume(self, tensors: dict[str, torch.Tensor] | None, where: Path, run_dir: Path, images_seen: int,
               is_main: bool) -> None:
        """Go on from a checkpoint's EMAs; the main process deletes the snapshots past it."""
        if tensors is None:
            raise ValueError(f"{where}: checkpoint has no post-hoc EMAs; ema.posthoc_stds can only be set "
                             "when a run starts")
        self.load_state_dict(tensors)
        if is_main:
            for p in drop_snapshots_after(run_dir, images_seen):
                log.info("removed %s: past the checkpoint resumed from", p)

    def write_snapshot(self, run_dir: Path, step: int, images_seen: int, dtype: str = "fp32") -> Path:
        """Atomic: a snapshot file is either complete or absent."""
        to = torch.float16 if dtype == "fp16" else torch.float32
        tensors = {k: (v.detach().to(to) if v.dtype.is_floating_point else v.detach()).cpu().contiguous()
                   for k, v in self.state_dict().items()}
        md = {"step": str(step), "images_seen": str(images_seen), "stds": json.dumps(self.stds)}
        path = Path(run_dir) / SNAPSHOT_DIR / f"images-{images_seen:010d}.safetensors"
        with atomic_write(path) as f:
            f.write(safetensors_bytes(tensors, metadata=md))
        return path


def drop_snapshots_after(run_dir: Path, images_seen: int) -> list[Path]:
    """On resume: snapshots past the checkpoint belong to an abandoned branch of the run."""
    gone = [s.path for s in list_snapshots(run_dir) if s.images_seen > images_seen]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


# ---------------------------------------------------------------- reconstruction


@dataclass(frozen=True)
class Snapshot:
    path: Path
    step: int
    images_seen: int
    stds: tuple[float, ...]


def list_snapshots(run_dir: Path) -> list[Snapshot]:
    root = Path(run_dir) / SNAPSHOT_DIR
    out = []
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if SNAPSHOT_NAME.match(p.name):
                with safe_open(str(p), framework="pt") as f:
                    md = f.metadata() or {}
                out.append(Snapshot(p, int(md["step"]), int(md["images_seen"]), tuple(json.loads(md["stds"]))))
    return out


def profile_inner(t_a, std_a, t_b, std_b) -> np.ndarray:
    """<p_a, p_b> for power-function profiles ending at t_a, t_b (broadcasting arrays).

    Integrating over [0, min(t_a, t_b)]:
    (g_a + 1)(g_b + 1) / (g_a + g_b + 1) * m^(g_a + g_b + 1) / (t_a^(g_a + 1) t_b^(g_b + 1)).
    Written with ratios <= 1 so that large exponents do not overflow.
    """
    t_a, t_b = np.float64(t_a), np.float64(t_b)
    g_a = np.vectorize(power_exponent)(std_a)
    g_b = np.vectorize(power_exponent)(std_b)
    lo, hi = np.minimum(t_a, t_b), np.maximum(t_a, t_b)
    g_hi = np.where(t_a >= t_b, g_a, g_b)  # the exponent of the longer profile
    return (g_a + 1) * (g_b + 1) / (g_a + g_b + 1) * (lo / hi) ** (g_hi + 1) / lo


def solve_coefficients(in_t, in_std, out_t: float, out_std: float) -> np.ndarray:
    """Weights of the input profiles whose sum is L2-closest to the output profile."""
    in_t, in_std = np.float64(in_t), np.float64(in_std)
    gram = profile_inner(in_t[:, None], in_std[:, None], in_t[None, :], in_std[None, :])
    rhs = profile_inner(in_t, in_std, np.float64(out_t), np.float64(out_std))
    try:
        x = np.linalg.solve(gram, rhs)
    except np.linalg.LinAlgError:  # duplicate profiles (the same snapshot twice)
        x = np.linalg.lstsq(gram, rhs, rcond=None)[0]
    return x / x.sum()  # an average of weights: the coefficients must sum to one


def reconstruct(run_dir: Path, std: float, upto_images: int | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """The EMA of relative std `std` at the last snapshot (or at `upto_images`),
    as fp32 tensors, with a dict describing how it was made."""
    snaps = [s for s in list_snapshots(run_dir) if s.images_seen > 0]
    if upto_images is not None:
        snaps = [s for s in snaps if s.images_seen <= upto_images]
    if not snaps:
        raise ValueError(f"{Path(run_dir) / SNAPSHOT_DIR}: no post-hoc EMA snapshots; train with "
                         "ema.posthoc_stds set (e.g. [0.05, 0.1])")
    t_out = snaps[-1].images_seen
    terms = [(s, k) for s in snaps for k in s.stds]
    coef = solve_coefficients([s.images_seen for s, _ in terms], [k for _, k in terms], t_out, std)
    acc: dict[str, torch.Tensor] = {}
    for (s, k), c in zip(terms, coef):
        prefix = std_key(k) + "."
        with safe_open(str(s.path), framework="pt") as f:
            for name in f.keys():
                if name.startswith(prefix):
                    v = f.get_tensor(name)
                    key = name[len(prefix):]
                    if not v.dtype.is_floating_point:  # integer buffers (counters): take the newest
                        acc[key] = v
                    elif key in acc:
                        acc[key] += float(c) * v.double()
                    else:
                        acc[key] = float(c) * v.double()
    info = {"std": std, "images_seen": t_out, "snapshots": len(snaps), "inputs": len(terms)}
    return {k: v.float() if v.dtype.is_floating_point else v for k, v in acc.items()}, info
