"""Notebook events: every change of a notebook's documents, jobs and conversations, published
on the broker so every open interface (notebook WebSocket, job SSE) updates by itself."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from studyrag.backends.broker.base import Broker

log = logging.getLogger(__name__)

_QUEUE_LIMIT = 10_000


def notebook_channel(notebook_id: str) -> str:
    return f"notebook:{notebook_id}"


def job_channel(job_id: str) -> str:
    return f"job:{job_id}"


class EventPublisher:
    """Publishes events in order from one owned task; `emit` never blocks its caller.

    Ingestion reports progress from synchronous callbacks; the broker is async (and may be
    remote), so events go through a queue drained by a task this object owns.
    """

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._queue: asyncio.Queue[tuple[list[str], dict[str, Any]] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="studyrag-events")

    def emit(self, event: dict[str, Any], *, notebook_id: str | None, job_id: str | None) -> None:
        """Queue `event` for the notebook's and the job's channels."""
        channels = [notebook_channel(notebook_id)] if notebook_id else []
        if job_id:
            channels.append(job_channel(job_id))
        if not channels:
            return
        if self._queue.qsize() >= _QUEUE_LIMIT:
            log.warning("event queue full; dropping %s", event.get("type"))
            return
        self._queue.put_nowait((channels, event))

    async def flush(self) -> None:
        """Wait until every queued event is published."""
        await self._queue.join()

    async def _drain(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                if item is None:
                    return
                channels, event = item
                for channel in channels:
                    try:
                        await self.broker.publish(channel, event)
                    except Exception:
                        log.exception("could not publish %s on %s", event.get("type"), channel)
            finally:
                self._queue.task_done()

    async def aclose(self) -> None:
        if self._task is not None:
            self._queue.put_nowait(None)
            try:
                await asyncio.wait_for(self._task, timeout=5)
            except TimeoutError:
                self._task.cancel()
            self._task = None
