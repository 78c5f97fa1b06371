"""Non-finite steps counted on the device: a step whose loss or gradient is not finite is
skipped there (fused AdamW's found_inf, an EMA update weighted by the same flag), and the
host reads these counters only at log steps and saves, never on an ordinary step."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger("xurdif.train")


class NonFiniteError(RuntimeError):
    pass


class NonFiniteCounter:
    """In a row, in total, and the step at which a streak first reached `limit` (0: never).
    A counter starts with no streak: a resumed run counts its own."""

    def __init__(self, limit: int, device: torch.device, total: int = 0, step: int = 0):
        self.limit = limit
        self._c = torch.tensor([0, total, 0], dtype=torch.int64, device=device)
        self._seen, self._checked_at = total, step  # what the last check reported

    def count(self, finite: torch.Tensor, step: int) -> None:
        bad = (~finite).long()
        in_row = (self._c[0] + 1) * bad
        hit = torch.where((self._c[2] == 0) & (in_row >= self.limit), step, self._c[2])
        self._c = torch.stack([in_row, self._c[1] + bad, hit])

    def read(self) -> tuple[int, int, int]:
        """(in a row, total, step the limit was hit or 0): one read from the device."""
        in_row, total, hit = self._c.tolist()
        return in_row, total, hit

    def check(self, step: int, checkpoints: Path) -> tuple[int, int]:
        """(in a row, total), warning of the steps skipped since the last check; raises
        NonFiniteError once `limit` came in a row. A host sync: log steps and saves only."""
        in_row, total, hit = self.read()
        if total > self._seen:
            log.warning("step %d: %d non-finite loss or gradient step(s) skipped since step %d",
                        step, total - self._seen, self._checked_at)
        self._seen, self._checked_at = total, step
        if hit:
            raise NonFiniteError(
                f"{self.limit} non-finite steps in a row at step {hit}; "
                f"stopping. Lower optim.lr or use mixed_precision: bf16. The last good checkpoint is in "
                f"{checkpoints}"
            )
        return in_row, total
