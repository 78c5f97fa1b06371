"""sampling.choose: at the end of a finished run, measure the candidate samplers on
the exported model(s) and record the winner in each file (xurdif/sampling/choose.py)."""
from __future__ import annotations

import logging
from typing import Callable

from tqdm import tqdm

log = logging.getLogger(__name__)


class ChoiceStopped(Exception):
    """A stop request (SIGTERM, the first Ctrl-C) during the choice."""


def choose_default_sampler(trainer, stopped: Callable[[], bool] = lambda: False) -> bool:
    """Main process only. model-best.safetensors is a different model: measured on its own.
    `stopped` is asked after every candidate: the choice takes minutes on a CPU, and a stop
    request used to be held until it ended. A file whose choice is cut keeps the sampler it
    had (the file is only rewritten whole, at the end of its choice). False when cut."""
    from ..sampling.choose import choose_for_file

    r = trainer.r
    kid = trainer.best.monitor()  # the evaluations' own: its reference features are measured once
    reference, name = kid.reference()
    run = trainer.out.run_dir

    def after_each() -> None:
        trainer.out.write_report()
        if stopped():
            raise ChoiceStopped

    for path in (run / "model.safetensors", run / "model-best.safetensors"):
        if not path.is_file():
            continue
        try:
            best, rows = choose_for_file(path, reference, kid.extractor, r.sampling.steps, r.sampling.samples,
                                         seed=r.train.seed, device=trainer.acc.device, reference_name=name,
                                         fit=r.sampling.fit, after_each=after_each)
        except ChoiceStopped:
            tqdm.write(f"stop requested: sampler choice ended; {path.name} and the files after it keep "
                       "the sampler they had")
            return False
        table = "; ".join(f"{x['sampler']}/{x['spacing']}" + (f"@{x['sigma_min']:g}" if x.get("sigma_min") else "")
                          + f" {x['kid_x1e3']:.2f}" for x in rows)
        tqdm.write(f"{path.name}: default sampler {best.describe()} (KID x1e3 against {name}, "
                   f"{r.sampling.samples} samples each: {table})")
    return True
