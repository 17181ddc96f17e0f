"""Measuring a benchmark process: peak and current RSS, CPU seconds, a CUDA-aware clock.

Used by the variants of ``detect_throughput.py`` (each in its own subprocess, so that its
peak RSS is its own).
"""

from __future__ import annotations

import resource
import time
from typing import List


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (VmHWM, else ru_maxrss)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_s() -> float:
    """CPU seconds (user + system, all threads) this process has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class RssTrace:
    """Samples this process's RSS (MiB) every ``every_s`` seconds in a daemon thread."""

    def __init__(self, every_s: float = 1.0) -> None:
        import threading

        self.samples: List[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.samples.append(round(rss_mb(), 1))

    def stop(self) -> List[float]:
        self._stop.set()
        self._thread.join()
        return self.samples


class Clock:
    """Wall-clock timer that waits for queued CUDA work before reading the clock."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def span(self):
        """``(wall s, cpu s)`` now; subtract two spans for the time between them."""
        return self.now(), cpu_s()
