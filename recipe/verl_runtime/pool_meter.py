"""Per-step increments of the SAM2 pool's counters, read from the actors' ``health()``.

Each actor counts from its own start, so a restarted actor (a new process id) starts again from zero: the meter
counts the restart and takes the new actor's counts as the step's increment.
"""

from __future__ import annotations

from typing import Any

COUNTERS = ("requests", "encodes", "cache_hits", "served_s")
"""``health()`` fields metered per step; ``served_s`` is the time the actor's device spent on batches."""


class PoolMeter:
    """Turns successive ``health()`` snapshots of a pool into per-step ``sam/*`` metrics."""

    def __init__(self, health: list[dict[str, Any]] | None = None):
        self.restarts = 0
        self._last: dict[str, tuple[int, dict[str, float]]] = {}
        if health:
            self.step(health)  # a baseline: what an attached, already running pool served before this run

    def step(self, health: list[dict[str, Any]]) -> dict[str, float]:
        """``sam/<counter>`` increments since the previous snapshot, and ``sam/restarts`` since the first."""
        totals = dict.fromkeys(COUNTERS, 0.0)
        for actor in health:
            pid, previous = self._last.get(actor["name"], (actor["pid"], {}))
            if pid != actor["pid"]:
                self.restarts += 1
                previous = {}
            current = {key: float(actor.get(key, 0)) for key in COUNTERS}
            for key in COUNTERS:
                totals[key] += current[key] - previous.get(key, 0.0)
            self._last[actor["name"]] = (actor["pid"], current)
        return {**{f"sam/{key}": value for key, value in totals.items()}, "sam/restarts": float(self.restarts)}
