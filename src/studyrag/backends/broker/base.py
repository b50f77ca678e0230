"""The Broker role: publish/subscribe between workers, plus shared counters for rate limits."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any, Self


class Broker(ABC):
    """Fan-out of JSON messages by channel, so any worker can serve any WebSocket client."""

    backend: str = ""

    @abstractmethod
    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        """Deliver `message` to every current subscriber of `channel`."""

    @abstractmethod
    def subscribe(self, channel: str) -> AsyncIterator[dict[str, Any]]:
        """Messages published on `channel` from now on, until the iterator is closed."""

    @abstractmethod
    async def hit(self, key: str, *, window: float) -> tuple[int, float]:
        """Count one event in a sliding window.

        Returns (events in the window, seconds until the oldest of them expires).
        """

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
