"""Helpers shared by the benchmarks: peak resident memory sampling and the default setup."""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def rss_bytes() -> int:
    """Current resident set size of this process (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory above the level at entry: CUDA allocator peak on GPU, else sampled RSS."""

    def __init__(self, device, interval: float = 0.001):
        self.device, self.interval = device, interval
        self.peak_above_start = 0

    def __enter__(self):
        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start = rss_bytes()
            self._peak, self._stop = self.start, False
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self):
        while not self._stop:
            self._peak = max(self._peak, rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_above_start = torch.cuda.max_memory_allocated() - self.start
        else:
            self._stop = True
            self._thread.join()
            self.peak_above_start = max(self._peak, rss_bytes()) - self.start
        return False
