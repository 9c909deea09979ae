"""A circuit breaker for the ingress's calls to the fraud service.

After `failures` requests in a row whose fraud check failed (every attempt), the replica
stops calling the service for `open_s` seconds: each request is decided at once (`decide`:
retry, or escalate when a person handles its intent anyway) instead of waiting out timeouts
and retries against a service that is down or overloaded, which keeps it overloaded and
turns an outage into a case per request. Then one request probes it: success closes the
breaker, failure opens it again.

Hand-written (a few lines, no I/O, an injectable clock): pybreaker and aiobreaker wrap the
call and raise their own error, while a request's record needs the breaker's state (how
long it stays open, the failure that opened it) and the call's own attempts and errors."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Breaker:
    failures: int  # in a row that open it; 0: never opens
    open_s: float
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    failed: int = 0  # requests in a row whose check failed
    opened_at: float | None = None
    # When the probe started: a probe whose request was cancelled never records, so one
    # older than open_s gives way to the next.
    probing_since: float | None = None
    last_error: str = ""

    def admit(self) -> float | None:
        """None: call the service. Else the seconds until it is tried again (open, or another
        request is probing it)."""
        if self.opened_at is None:
            return None
        left = self.opened_at + self.open_s - self.clock()
        if left > 0:
            return left
        now = self.clock()
        if self.probing_since is not None and now - self.probing_since < self.open_s:
            return min(self.open_s, 1.0)
        self.probing_since = now
        return None

    def record(self, ok: bool, error: str = "") -> None:
        """The outcome of an admitted call."""
        self.probing_since = None
        if ok:
            self.failed, self.opened_at = 0, None
            return
        self.failed += 1
        self.last_error = error
        if self.failures and self.failed >= self.failures:
            self.opened_at = self.clock()

    def why_open(self, wait_s: float) -> str:
        return (f"circuit open: {self.failed} request(s) in a row failed their fraud check "
                f"(last: {self.last_error}); not called, tried again in {wait_s:.0f}s")
