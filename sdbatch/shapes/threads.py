"""Pick torch's CPU thread count by measurement (``--threads auto`` of ``train_tiny``)."""

from __future__ import annotations

import os

import torch


class ThreadPicker:
    """Torch's CPU thread count, chosen by measurement when ``--threads auto``.

    Why: on a machine shared with other jobs, two OpenMP threads on two busy cores wait for
    each other at every operator (measured: 10 s per step instead of 0.35 s with one thread).
    ``auto`` times real training steps with 1 thread and with all cores, keeps the faster,
    and probes again every 500 steps, at each phase change, or when a step is 3x slower than
    usual. Thread counts change rounding only, never the data, noise or schedule.
    """

    PROBE_EVERY, PROBE_STEPS = 500, 2

    def __init__(self, threads: str | int):
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        self.fixed = None if str(threads) == "auto" else int(threads)
        self.candidates = [self.fixed] if self.fixed else sorted({1, max(1, cores or 1)})
        self.best, self.times, self.queue, self.used = self.candidates[-1], {}, [], {}
        self.next_probe, self.phase, self.usual = 0, None, float("inf")

    def pick(self, step: int) -> int:
        if len(self.candidates) > 1 and not self.queue and step >= self.next_probe:
            self.queue = [n for _ in range(self.PROBE_STEPS) for n in self.candidates]
            self.times = {n: [] for n in self.candidates}
            self.next_probe = step + self.PROBE_EVERY
        n = self.queue[0] if self.queue else self.best
        torch.set_num_threads(n)
        return n

    def record(self, n: int, seconds: float, phase: str) -> None:
        self.used[n] = self.used.get(n, 0) + 1
        if phase != self.phase:  # a new phase has other costs: probe at the next step
            self.phase, self.next_probe, self.queue = phase, 0, []
            return
        if self.queue:
            self.times[self.queue.pop(0)].append(seconds)
            firsts = [min(t) for t in self.times.values() if t]
            if len(firsts) == len(self.candidates) and max(firsts) > 3 * min(firsts):
                self.queue = []  # one round is conclusive: do not pay for a second slow step
            if not self.queue:
                self.best = min(self.candidates, key=lambda k: min(self.times[k]))
                self.usual = min(self.times[self.best])
        elif len(self.candidates) > 1 and seconds > 3 * self.usual:
            self.next_probe = 0

    def summary(self) -> str:
        mode = "auto" if self.fixed is None else "fixed"
        return f"{mode}; steps per thread count: {dict(sorted(self.used.items()))}"
