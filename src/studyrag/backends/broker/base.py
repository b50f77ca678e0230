"""The Broker role: what workers share through Redis (or, for one worker, in process).

Four things cross workers through it: pub/sub channels (fan-out of frames, stop requests),
numbered event streams with a TTL (every streaming answer, so any worker can replay it),
leases (a key held by one owner while it renews it: the one worker running an answer) with
a small registry beside them (the answers running now), and slots (bounded groups of
members, each held while its holder renews it: the WebSocket clients of a conversation or
an address, on every worker). Rate counts are the `limits` library's (auth/quotas.py), in
the same Redis.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import aclosing
from typing import Any, Self, cast

log = logging.getLogger(__name__)


class Broker(ABC):
    """Fan-out of JSON messages by channel, so any worker can serve any WebSocket client."""

    backend: str = ""

    @abstractmethod
    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        """Deliver `message` to every current subscriber of `channel`."""

    @abstractmethod
    def subscribe(self, channel: str) -> AsyncIterator[dict[str, Any]]:
        """Messages published on `channel` from now on, until the iterator is closed."""

    # --- slots: groups of at most `limit` live members ------------------------------------
    @abstractmethod
    async def take_slot(
        self, group: str, member: str, *, limit: int, ttl: float
    ) -> tuple[bool, int]:
        """Add `member` to `group` for `ttl` seconds unless `limit` live members are in it.

        Atomic: of many takers racing for the last slot, one wins. Returns (taken, live
        members now). Taking a slot one already holds renews it.
        """

    @abstractmethod
    async def keep_slots(self, slots: Iterable[tuple[str, str]], *, ttl: float) -> None:
        """Hold each (group, member) `ttl` seconds more (the holder's heartbeat); a slot
        that expired meanwhile (a Redis restarted empty) is held again."""

    @abstractmethod
    async def drop_slot(self, group: str, member: str) -> None:
        """Free `member`'s slot in `group` (nothing if it holds none)."""

    # --- numbered event streams ----------------------------------------------------------
    @abstractmethod
    async def append(
        self, stream: str, entry_id: int, entry: dict[str, Any], *, maxlen: int, ttl: float
    ) -> None:
        """Add entry `entry_id` (above every id already there) to `stream`.

        The stream keeps its last `maxlen` entries and is forgotten `ttl` seconds after its
        latest append.
        """

    @abstractmethod
    async def read(
        self, stream: str, *, after: int = 0, block: float = 0.0
    ) -> list[tuple[int, dict[str, Any]]]:
        """The entries of `stream` with an id above `after`, in order.

        With `block` > 0 and none there yet, waits up to `block` seconds for the first.
        """

    # --- leases and the registry ---------------------------------------------------------
    @abstractmethod
    async def claim(self, key: str, owner: str, *, ttl: float) -> bool:
        """Take `key` for `owner` for `ttl` seconds unless someone holds it; True if taken."""

    @abstractmethod
    async def renew(self, key: str, owner: str, *, ttl: float) -> bool:
        """Extend `owner`'s hold on `key` by `ttl` seconds; False if `owner` no longer holds it."""

    @abstractmethod
    async def release(self, key: str, owner: str) -> bool:
        """Drop `key` if `owner` holds it; True if it was dropped."""

    @abstractmethod
    async def get(self, key: str) -> str | None:
        """The value of `key` (a lease's owner, or what put() stored), None if absent."""

    @abstractmethod
    async def put(self, key: str, value: str, *, ttl: float) -> None:
        """Store `value` under `key` for `ttl` seconds."""

    @abstractmethod
    async def register(self, registry: str, member: str, value: str) -> None:
        """Record `member` (with `value`) in `registry` until unregistered."""

    @abstractmethod
    async def unregister(self, registry: str, member: str) -> None:
        """Remove `member` from `registry`."""

    @abstractmethod
    async def registered(self, registry: str) -> dict[str, str]:
        """Every member of `registry` with its value."""

    async def ping(self) -> None:  # noqa: B027 - in process there is nothing to reach
        """Raise BackendUnavailable if the broker cannot be reached."""

    async def health_check(self) -> dict[str, Any]:
        """{'status': 'ok'|'unavailable', 'backend', ...}; never raises."""
        return {"status": "ok", "backend": self.backend}

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Disconnect."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def follow_channel(
    broker: Broker,
    channel: str,
    handle: Callable[[dict[str, Any]], Awaitable[None]],
    *,
    what: str,
) -> None:
    """Call `handle` for every message on `channel`, for ever: a broken subscription (Redis
    restarted, unreachable) is logged and made again with backoff (0.5 s doubling to 10 s).
    Run it as an owned task; cancelling it is the only way it ends."""
    delay = 0.5
    while True:
        try:
            messages = cast(AsyncGenerator[dict[str, Any], None], broker.subscribe(channel))
            async with aclosing(messages):
                delay = 0.5
                async for message in messages:
                    await handle(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broker outage is logged and retried
            log.warning("%s failed (%s); retrying in %.1f s", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
