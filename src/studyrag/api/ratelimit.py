"""Messages per client per minute, counted in the broker so every worker shares the count."""

from __future__ import annotations

import re

from starlette.requests import HTTPConnection

from studyrag.backends.broker.base import Broker
from studyrag.errors import RateLimited

WINDOW_SECONDS = 60.0
_CLIENT_ID = re.compile(r"[^A-Za-z0-9._:-]")


class RateLimiter:
    """A sliding one-minute window per client key; a limit of 0 disables it."""

    def __init__(self, broker: Broker, *, per_minute: int) -> None:
        self.broker = broker
        self.per_minute = per_minute

    async def check(self, key: str) -> None:
        """Count one message for `key`; RateLimited (RATE_001, 429) when over the limit."""
        # Refused attempts count too, so a client that keeps hammering keeps being refused.
        if self.per_minute <= 0:
            return
        count, retry_after = await self.broker.hit(f"msg:{key}", window=WINDOW_SECONDS)
        if count > self.per_minute:
            raise RateLimited(max(retry_after, 0.1), limit=self.per_minute)


def http_client_key(conn: HTTPConnection) -> str:
    """The caller's address, refined by an optional X-Client-ID header (several tabs, one IP)."""
    host = conn.client.host if conn.client else "unknown"
    client_id = _CLIENT_ID.sub("", conn.headers.get("x-client-id", ""))[:64]
    return f"http:{host}:{client_id}" if client_id else f"http:{host}"
