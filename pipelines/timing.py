"""Seconds per step of a unit of work, for the stats a stream batch or a refresh reports."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class PhaseTimer:
    """Mixin for a dataclass with a ``phases: dict[str, float]`` field: ``with stats.phase("x"):`` adds the
    block's wall time to ``phases["x"]`` (rounded to 10 ms), also when the block raises."""

    phases: dict[str, float]

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.time()
        try:
            yield
        finally:
            self.phases[name] = round(self.phases.get(name, 0.0) + time.time() - t0, 2)
