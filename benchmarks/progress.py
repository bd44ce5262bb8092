"""Progress while the suite runs: a tqdm bar when tqdm is installed, else plain lines.

The bar counts work units (workloads, Jacobian sizes, sweep widths); its text names the
phase under way. Both go to stderr, so the table on stdout stays clean.
"""

from __future__ import annotations

import sys
import time


class Progress:
    """``phase(label)`` names what runs; ``advance()`` counts a finished part."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.perf_counter()
        try:
            from tqdm import tqdm
        except ImportError:
            self.bar = None
        else:
            self.bar = tqdm(total=total, file=sys.stderr, unit="part", dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}]")

    def phase(self, label: str) -> None:
        """The phase now running (shown beside the bar, or printed)."""
        if self.bar is not None:
            self.bar.set_description_str(label[:60])
        else:
            print(f"[{self.done}/{self.total} {time.perf_counter() - self.t0:5.0f} s] {label}",
                  file=sys.stderr, flush=True)

    def advance(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
