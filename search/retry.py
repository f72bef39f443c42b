"""Retry after a failure, at most every so often: one rule for every load that can fail.

    gate = RetryGate(5.0)
    gate.check()            # raises the remembered error while it is recent (no new work)
    try: ... except SearchError as exc: gate.failed(exc); raise
    gate.succeeded()

A burst of requests on a process whose model or index failed to load gets the same error at once
instead of each retrying (and stampeding S3); the load is tried again once ``seconds`` passed.
Used by the runtime (model + index) and the live index (its first load).
"""

from __future__ import annotations

import time

from search.errors import SearchError


class RetryGate:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.error: SearchError | None = None  # the last failure (None: the last try worked)
        self._failed_at: float | None = None

    def check(self) -> None:
        if self.error is not None and self._failed_at is not None and self.recent():
            raise self.error

    def recent(self) -> bool:
        return self._failed_at is not None and time.monotonic() - self._failed_at < self.seconds

    def failed(self, error: SearchError) -> None:
        self.error, self._failed_at = error, time.monotonic()

    def succeeded(self) -> None:
        self.error, self._failed_at = None, None
