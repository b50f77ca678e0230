"""Messages per client per minute, counted in the broker so every worker shares the count."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from studyrag.auth.context import acting_user
from studyrag.backends.broker.base import Broker
from studyrag.errors import BrokerUnavailable, RateLimited, StudyRAGError

WINDOW_SECONDS = 60.0


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
        try:
            count, retry_after = await self.broker.hit(f"msg:{key}", window=WINDOW_SECONDS)
        except StudyRAGError as exc:
            # The shared count is out of reach: refuse rather than let each worker count alone.
            raise BrokerUnavailable(
                f"This worker cannot reach the message broker, so it takes no new answers "
                f"until the broker is back ({exc.message}).",
                hint="Start Redis (check with `redis-cli ping`); GET /health shows the "
                "broker's state.",
            ) from exc
        if count > self.per_minute:
            raise RateLimited(max(retry_after, 0.1), limit=self.per_minute)


def client_key(conn: HTTPConnection) -> str:
    """The rate-limit key of an HTTP request or a WebSocket: its user in multi-user mode
    (a class behind one NAT address gets a budget per student), else the caller's address."""
    # Nothing the client chooses (a header, a new socket, a new client id) is part of the
    # key: any of those would hand a client a fresh budget whenever it asked for one. HTTP,
    # SSE and WebSocket messages of one user (or address) therefore share one budget.
    user = acting_user.get()  # set by the route's access policy (auth/policy.py)
    if user is not None:
        return f"user:{user}"
    return f"addr:{conn.client.host if conn.client else 'unknown'}"
