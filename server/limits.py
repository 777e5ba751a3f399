"""Token buckets: the rate limits of tabs, of the HTTP fallback and of failed logins."""

from __future__ import annotations

import time

__all__ = ["TokenBucket", "TokenBuckets"]


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; starts full."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        """Take a token if there is one; tell whether there was."""
        self._refill()
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def give(self) -> None:
        """Put back a token taken for what turned out not to count (never past the burst)."""
        self._refill()
        self.tokens = min(float(self.burst), self.tokens + 1)

    def wait(self) -> float:
        """Return the seconds until a token is there (0 if one is)."""
        self._refill()
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def full(self) -> bool:
        """Tell whether the bucket has refilled to its burst (a fresh one is no different)."""
        self._refill()
        return self.tokens >= self.burst

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now


class TokenBuckets:
    """A bucket per key, made on first use; full ones are forgotten when the map grows."""

    def __init__(self, rate: float, burst: int, *, most: int = 10_000) -> None:
        self.rate, self.burst, self.most = rate, burst, most
        self._buckets: dict[object, TokenBucket] = {}

    def get(self, key: object) -> TokenBucket:
        """Return the key's bucket, making a full one if it has none."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.most:
                for stale in [k for k, b in self._buckets.items() if b.full()]:
                    del self._buckets[stale]
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst)
        return bucket

    def __len__(self) -> int:
        return len(self._buckets)
