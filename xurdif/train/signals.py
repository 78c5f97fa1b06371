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
