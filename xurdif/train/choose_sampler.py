"""sampling.choose: at the end of a finished run, measure the candidate samplers on
the exported model(s) and record the winner in each file (xurdif/sampling/choose.py)."""
from __future__ import annotations

import logging

from tqdm import tqdm

log = logging.getLogger(__name__)


def choose_default_sampler(trainer) -> None:
    """Main process only. model-best.safetensors is a different model: measured on its own."""
    from ..sampling.choose import choose_for_file

    r = trainer.r
    kid = trainer.best.monitor()  # the evaluations' own: its reference features are measured once
    reference, name = kid.reference()
    run = trainer.out.run_dir
    for path in (run / "model.safetensors", run / "model-best.safetensors"):
        if not path.is_file():
            continue
        best, rows = choose_for_file(path, reference, kid.extractor, r.sampling.steps, r.sampling.samples,
                                     seed=r.train.seed, device=trainer.acc.device, reference_name=name,
                                     fit=r.sampling.fit, after_each=trainer.out.write_report)
        table = "; ".join(f"{x['sampler']}/{x['spacing']}" + (f"@{x['sigma_min']:g}" if x.get("sigma_min") else "")
                          + f" {x['kid_x1e3']:.2f}" for x in rows)
        tqdm.write(f"{path.name}: default sampler {best.describe()} (KID x1e3 against {name}, "
                   f"{r.sampling.samples} samples each: {table})")
