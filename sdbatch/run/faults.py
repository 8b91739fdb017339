"""Fault injection for tests: ``SDBATCH_TEST_FAULTS="oom@0,nan@3,error@5,enospc@2"``.

Real CUDA out-of-memory, NaN images and full disks cannot be produced on demand on a CPU test
machine, so the runner consults this hook at the three places those faults arise:

- ``oom@B``: rendering batch B with more than one image raises ``torch.OutOfMemoryError``;
- ``error@B``: rendering batch B raises ``RuntimeError``;
- ``nan@J``: the image of the plan's job J comes out NaN;
- ``enospc@B``: writing batch B's images fails with "No space left on device".

Unset (always, outside tests) it costs one dict lookup per batch.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

ENV = "SDBATCH_TEST_FAULTS"


@dataclass
class Faults:
    at: dict[str, set[int]] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> Faults:
        at: dict[str, set[int]] = {}
        for item in filter(None, os.environ.get(ENV, "").split(",")):
            kind, _, index = item.strip().partition("@")
            at.setdefault(kind, set()).add(int(index))
        return cls(at)

    def render(self, render, batch_index: int):
        """Wrap ``render(jobs)`` with the faults planned for this batch."""
        if not self.at:
            return render

        def faulty(jobs):
            if batch_index in self.at.get("error", ()):
                raise RuntimeError(f"injected fault in batch {batch_index}")
            if batch_index in self.at.get("oom", ()) and len(jobs) > 1:
                import torch

                raise torch.OutOfMemoryError(f"injected CUDA out of memory ({len(jobs)} images)")
            outputs = render(jobs)
            return [
                (pixels, True) if job.index in self.at.get("nan", ()) else (pixels, nan)
                for job, (pixels, nan) in zip(jobs, outputs, strict=True)
            ]

        return faulty

    def before_write(self, batch_index: int) -> None:
        if batch_index in self.at.get("enospc", ()):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
