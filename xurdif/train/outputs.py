"""What a run writes into its folder: the resolved recipe, TensorBoard logs,
sample grids and the exported model. Only the main process writes."""
from __future__ import annotations

import dataclasses
import logging
import math
import struct
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from ..atomic import atomic_write
from ..diffusion.denoiser import Denoiser
from ..diffusion.losses import TERMS, TOTAL
from ..diffusion.samplers import sample
from ..diffusion.schedule import Schedule
from ..killpoint import kill_point
from ..library.card import CARD, model_card
from ..recipe import Recipe, recipe_to_yaml
from ..seeds import derive_seed
from ..report import REPORT, Series, gather, read_scalars, write_report
from ..sampling.defaults import resolve
from ..weights import ModelMeta, read_meta, save_model_file

log = logging.getLogger("xurdif.train")


def scalar_tag(name: str) -> str:
    """The TensorBoard tag of a logged training value (the report uses the same): the loss
    terms, named where they are computed, under loss/; every other statistic under train/."""
    return f"loss/{name}" if name in (*TERMS, TOTAL) else f"train/{name}"


class RunOutputs:
    """Built before the dataset is opened; `open()` creates the folder once the run is
    known to start, so a bad data path leaves no folder behind."""

    def __init__(self, recipe: Recipe, run_dir: Path, is_main: bool):
        self.r = recipe
        self.run_dir = Path(run_dir)
        self.is_main = is_main
        self.writer = None
        self.scalars: Series = {}  # every value logged, for report.html without rereading tb/

    def open(self) -> None:
        if not self.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "samples").mkdir(exist_ok=True)
        with atomic_write(self.run_dir / "recipe.yaml", "w") as f:
            f.write(recipe_to_yaml(self.r))
            kill_point("mid-recipe-write")  # written to the temporary, not yet renamed
        if (self.run_dir / "tb").is_dir():  # resumed: the report shows the earlier sessions too
            self.scalars = read_scalars(self.run_dir / "tb")
        if self.r.log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tb"))
        kill_point("after-run-dir")
        self.write_report()

    def _log(self, tagged: dict[str, float], step: int) -> None:
        for tag, v in tagged.items():
            # Rounded as TensorBoard stores it (float32), so the report and tb/ agree exactly.
            self.scalars.setdefault(tag, {})[step] = struct.unpack("f", struct.pack("f", float(v)))[0]
            if self.writer is not None:
                self.writer.add_scalar(tag, v, step)
        if self.writer is not None:
            self.writer.flush()
        self.write_report()

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        if self.is_main:
            self._log({scalar_tag(k): v for k, v in values.items()}, step)

    def log_eval(self, values: dict[str, float], step: int) -> None:
        if self.is_main:
            self._log({f"eval/{k}": v for k, v in values.items()}, step)

    def write_report(self) -> None:
        """<run>/report.html, current at each log interval, grid and checkpoint. A report
        that cannot be written (disk full, odd file) must not stop the training."""
        if not self.is_main:
            return
        try:
            write_report([gather(self.run_dir, scalars=self.scalars)], self.run_dir / REPORT)
        except OSError as e:
            log.warning("could not write %s: %s", self.run_dir / REPORT, e)

    def log_text(self, tag: str, text: str, step: int) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, step)
            self.writer.flush()

    @torch.no_grad()
    def sample_grid(self, ema: torch.nn.Module, schedule: Schedule, meta: ModelMeta, step: int) -> Path | None:
        """A fixed-seed grid from the EMA weights, so grids are comparable over time."""
        if not self.is_main:
            return None
        s = self.r.samples
        den = Denoiser(ema, schedule, meta.prediction, meta.value_range)
        device = next(ema.parameters()).device
        h, w = meta.image_size
        g = torch.Generator().manual_seed(derive_seed(s.seed, "samples"))
        st = resolve(meta.default_sampling(), s.sampler, s.steps)
        x0 = sample(den, (s.n, 3, h, w), generator=g, device=device, **st.sample_args())
        grid = make_grid(den.to_image(x0).float().cpu(), nrow=math.ceil(math.sqrt(s.n)), padding=2, pad_value=1.0)
        path = self.run_dir / "samples" / f"step-{step:07d}.png"
        save_image(grid, path)
        if self.writer is not None:
            self.writer.add_image("samples", grid, step)
            self.writer.flush()
        self.write_report()
        return path

    def export_model(self, meta: ModelMeta, model: dict, ema: dict) -> Path:
        path = self.run_dir / "model.safetensors"
        save_model_file(path, meta, model, ema)
        self.write_card(meta)
        return path

    def write_card(self, meta: ModelMeta) -> None:
        """README.md beside the export: the model card (xurdif/library/card.py). One that cannot
        be written (disk full, odd file) must not stop the training."""
        try:
            with atomic_write(self.run_dir / CARD, "w") as f:
                f.write(model_card(meta, self.r.name, self.run_dir, self.scalars))
        except OSError as e:
            log.warning("could not write %s: %s", self.run_dir / CARD, e)

    def export_best(self, meta: ModelMeta, model: dict, ema: dict, step: int, scores: dict[str, float]) -> Path:
        """model-best.safetensors: the lowest in-training KID so far, with its scores in the metadata."""
        path = self.run_dir / "model-best.safetensors"
        best = {"step": step, **{k: float(v) for k, v in scores.items()}}
        save_model_file(path, dataclasses.replace(meta, extra={**meta.extra, "best": best}), model, ema)
        return path

    def write_heldout(self, heldout) -> Path:
        """heldout.txt: which images were never trained on, so the user can score with them too."""
        path = self.run_dir / "heldout.txt"
        text = f"# {len(heldout.names)} images held out from training ({heldout.origin})\n"
        with atomic_write(path, "w") as f:
            f.write(text + "".join(name + "\n" for name in heldout.names))
        return path

    def write_closest(self, picture: torch.Tensor, which: str) -> Path:
        """eval/closest-{which}.png: samples beside their nearest training images (which: last or best)."""
        path = self.run_dir / "eval" / f"closest-{which}.png"
        path.parent.mkdir(exist_ok=True)
        with atomic_write(path) as f:
            save_image(picture.float() / 255, f, format="png")
        return path

    def exported_step(self) -> int | None:
        """The training step model.safetensors holds; None if it is missing or unreadable."""
        try:
            return read_meta(self.run_dir / "model.safetensors").step
        except Exception:  # missing, truncated, foreign: any of them means "export again"
            return None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
