"""Repeated failures of one item (a deadline, a notification row): retry with backoff, and
give up on it, loudly, once it has failed again and again while other work went through.

An item that fails only because everything fails (the database is away) is retried for as
long as that lasts: giving up then would silently end every escalation. An item that fails
while the rest succeeds is poison: retrying it forever would hide the fault and spin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K")

GIVE_UP_AFTER = 8
RETRY_MIN_S = 1.0
RETRY_MAX_S = 60.0


@dataclass
class _Record:
    count: int
    progress_at_first: int
    error: str


class RepeatFailures(Generic[K]):
    def __init__(
        self,
        limit: int | None = None,
        retry_min: float | None = None,
        retry_max: float | None = None,
    ) -> None:
        # module defaults read at construction, so a test can shorten them for a whole daemon
        self.limit = GIVE_UP_AFTER if limit is None else limit
        if self.limit < 1:
            raise ValueError("limit must be >= 1")
        self.retry_min = RETRY_MIN_S if retry_min is None else retry_min
        self.retry_max = RETRY_MAX_S if retry_max is None else retry_max
        self._failing: dict[K, _Record] = {}

    def __len__(self) -> int:
        return len(self._failing)

    def failed(self, key: K, error: str, progress: int) -> float | None:
        """Record a failure of `key`. `progress` counts the work that succeeded so far (e.g.
        committed transactions). Returns the delay before the next try, or None: give up."""
        rec = self._failing.get(key)
        if rec is None:
            rec = self._failing[key] = _Record(0, progress, error)
        rec.count += 1
        rec.error = error
        if rec.count >= self.limit and progress > rec.progress_at_first:
            del self._failing[key]
            return None
        return float(min(self.retry_max, self.retry_min * 2 ** (rec.count - 1)))

    def succeeded(self, key: K) -> None:
        self._failing.pop(key, None)

    def attempts(self, key: K) -> int:
        rec = self._failing.get(key)
        return rec.count if rec else 0
