"""Stop requests: SIGTERM, SIGINT and SIGUSR1 finish the current step, save and
exit cleanly; a second SIGINT stops at once."""
from __future__ import annotations

import signal

import torch


class StopRequest:
    def __init__(self) -> None:
        self.flag = False
        self._previous: dict[int, object] = {}

    def install(self) -> "StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGUSR1", None)):
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.flag and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.flag = True
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, self._handle)

    def requested(self, accelerator) -> bool:
        """True on every rank as soon as any rank got a signal (keeps ranks in step)."""
        if accelerator.num_processes == 1:
            return self.flag
        t = torch.tensor(float(self.flag), device=accelerator.device)
        return bool(accelerator.reduce(t, "sum") > 0)


def stop_with_launcher() -> bool:
    """Under a launcher (accelerate / torchrun set LOCAL_RANK), ask the kernel for SIGTERM
    when the launcher dies: torch starts each rank in a session of its own, so a kill -9
    of the launcher's process group left the ranks training on, as orphans holding the
    run folder and the rendezvous port. SIGTERM makes them save and exit like any stop.
    Linux only; True when armed."""
    import ctypes
    import os
    import sys

    if "LOCAL_RANK" not in os.environ or not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    PR_SET_PDEATHSIG = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # the launcher died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)
    return True
