"""Token buckets: how many requests a client may make, refilled at a steady rate.

Pure: the caller passes the time (a monotonic clock in seconds). Each key has a bucket
of `capacity` tokens refilled at `rate` tokens a second; a request takes one token, or
is refused with the seconds until one is back. Buckets that are full again are
forgotten, and at most `max_keys` are kept (the fullest go first), so memory stays
bounded whatever the keys are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class TokenBuckets:
    """One token bucket per key (see the module docstring)."""

    capacity: float
    rate: float
    max_keys: int = 10_000
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)
    """key -> (tokens at `at`, at)."""

    def take(self, key: str, now: float) -> int | None:
        """Take a token for `key`: None when there was one, else the whole seconds to
        wait (at least 1) before one is back."""
        tokens, at = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - at) * self.rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return max(1, math.ceil((1 - tokens) / self.rate))
        self._buckets[key] = (tokens - 1, now)
        if len(self._buckets) > self.max_keys:
            self._forget(now)
        return None

    def _forget(self, now: float) -> None:
        """Drop the buckets that are full again; if still too many, the fullest."""
        level = {
            key: min(self.capacity, tokens + (now - at) * self.rate)
            for key, (tokens, at) in self._buckets.items()
        }
        for key, tokens in level.items():
            if tokens >= self.capacity:
                del self._buckets[key]
        excess = len(self._buckets) - self.max_keys
        if excess > 0:
            for key in sorted(self._buckets, key=lambda k: -level[k])[:excess]:
                del self._buckets[key]
