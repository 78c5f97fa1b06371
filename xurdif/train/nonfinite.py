"""Non-finite steps counted on the device: a step whose loss or gradient is not finite is
skipped there (fused AdamW's found_inf, an EMA update weighted by the same flag), and the
host reads these counters only at log steps and saves, never on an ordinary step."""
from __future__ import annotations

import torch


class NonFiniteCounter:
    """In a row, in total, and the step at which a streak first reached `limit` (0: never)."""

    def __init__(self, in_row: int, total: int, limit: int, device: torch.device):
        self.limit = limit
        self._c = torch.tensor([in_row, total, 0], dtype=torch.int64, device=device)

    def count(self, finite: torch.Tensor, step: int) -> None:
        bad = (~finite).long()
        in_row = (self._c[0] + 1) * bad
        hit = torch.where((self._c[2] == 0) & (in_row >= self.limit), step, self._c[2])
        self._c = torch.stack([in_row, self._c[1] + bad, hit])

    def read(self) -> tuple[int, int, int]:
        """(in a row, total, step the limit was hit or 0): one read from the device."""
        in_row, total, hit = self._c.tolist()
        return in_row, total, hit
