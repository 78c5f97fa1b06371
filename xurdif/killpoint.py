"""Named points where the process can kill -9 itself, so that tests can land a kill
in each window between two writes and prove the same command recovers.

XURDIF_KILL_AT=NAME kills at the first time NAME is reached; NAME@STEP only when
that point is reached for training step STEP. Unset (always, outside tests): no-op.
"""
from __future__ import annotations

import os
import signal

ENV = "XURDIF_KILL_AT"


def kill_point(name: str, step: int | None = None) -> None:
    want = os.environ.get(ENV)
    if not want:
        return
    wanted_name, _, wanted_step = want.partition("@")
    if wanted_name == name and (not wanted_step or (step is not None and int(wanted_step) == step)):
        os.kill(os.getpid(), signal.SIGKILL)
