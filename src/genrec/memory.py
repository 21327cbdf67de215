"""Peak resident memory of a process and everything it started (a Spark JVM, torchrun ranks), sampled.

What a pod's memory limit counts is the whole tree, so that is what is measured: every stage logs its peak as the
MLflow metric `peak_rss_mib` (genrec.tracking), and the scale bench and the memory-cap test read it the same way.
Sampling can miss a spike shorter than the interval; the interval is short next to any stage.
"""

from __future__ import annotations

import os
import threading

import psutil


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and its descendants now (those that ended in between count as 0)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


class PeakMemory:
    """Samples tree_rss(pid) every `interval_s` in a background thread until stop(); `peak` is the largest seen.
    With `cap` (bytes), `on_cap` is called once when the tree goes above it (a test's watchdog kills the tree)."""

    def __init__(self, pid: int | None = None, interval_s: float = 0.05, cap: int = 0, on_cap=None):
        self.pid, self.interval_s, self.cap, self.on_cap = pid or os.getpid(), interval_s, cap, on_cap
        self.peak = 0
        self.capped = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="genrec-peak-memory", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            if self.cap and self.peak > self.cap and not self.capped:
                self.capped = True
                if self.on_cap is not None:
                    self.on_cap()
            self._stop.wait(self.interval_s)

    def start(self) -> "PeakMemory":
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop sampling; returns the peak in bytes."""
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(self.pid))
        return self.peak

    def __enter__(self) -> "PeakMemory":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
