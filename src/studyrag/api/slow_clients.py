"""A deadline for a request's headers, which uvicorn does not have (issue 12: slow headers).

uvicorn's `timeout_keep_alive` runs only between requests, and any byte received cancels it:
a client that opens a connection and sends its headers a byte at a time holds the connection
(and a file descriptor) for ever. HeaderDeadlineH11 closes a connection whose request line
and headers are not complete within `seconds` of the connection opening or of the previous
response ending. Bodies are not bounded here (the app reads them; see docs/operations.md).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


def header_deadline_protocol(seconds: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a `seconds` deadline on every request's headers."""

    class HeaderDeadlineH11(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm_header_deadline(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(seconds, self._header_deadline_passed)

        def _header_deadline_passed(self) -> None:
            waiting = self.cycle is None or self.cycle.response_complete
            if waiting and not self.transport.is_closing():
                log.info("closed a connection whose headers took over %.0f s", seconds)
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_deadline()

        def handle_websocket_upgrade(self, event: Any) -> None:
            # The socket now belongs to the WebSocket protocol, and this one never hears of
            # it again (not even connection_lost): a timer left armed would close a live
            # WebSocket `seconds` after its handshake.
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            super().handle_websocket_upgrade(event)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

    return HeaderDeadlineH11
