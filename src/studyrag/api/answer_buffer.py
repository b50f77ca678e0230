"""One answer's numbered events as a worker holds them: its own answer, or a mirror of one.

Event ids are 1, 2, 3… within an answer (the same ids as its broker stream's entries);
followers wait on a wake-up event instead of polling, and resuming is a bisect on the ids.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import AsyncIterator
from typing import Any

from studyrag.errors import StudyRAGError


class BufferedEvent:
    """One engine event with its buffer id; `data` is the event's dict without `type`."""

    __slots__ = ("id", "type", "data")

    def __init__(self, event_id: int, type_: str, data: dict[str, Any]) -> None:
        self.id = event_id
        self.type = type_
        self.data = data


class Generation:
    """One answer: its buffered events and its state (or a mirror of one on another worker)."""

    def __init__(self, *, gen_id: str, conversation_id: str, local: bool) -> None:
        self.id = gen_id
        self.conversation_id = conversation_id
        self.local = local
        self.message_id: str | None = None
        self.events: list[BufferedEvent] = []
        self._ids: list[int] = []
        self.token_ids: dict[int, int] = {}  # token seq -> buffer id
        self.start_id: int | None = None
        self.last_seq = 0
        # running | complete | stopped | error | lost
        self.state = "running"
        self.started = time.monotonic()
        self.last_activity = self.started
        self.finished_at: float | None = None
        self.stop_requested = False
        # True once this worker holds the conversation's lease for it (local answers only).
        self.leased = False
        self.exception: StudyRAGError | None = None
        self.task: asyncio.Task[None] | None = None
        # A task cancelled before its first step never runs its own cleanup; see _cancel.
        self.task_started = asyncio.Event()
        self._wake = asyncio.Event()
        self._done = asyncio.Event()

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def last_id(self) -> int:
        return self._ids[-1] if self._ids else 0

    def add(self, event_id: int, type_: str, data: dict[str, Any]) -> BufferedEvent:
        """Append an event and wake everyone following the buffer."""
        event = BufferedEvent(event_id, type_, data)
        self.events.append(event)
        self._ids.append(event_id)
        self.last_activity = time.monotonic()
        if type_ == "start":
            self.start_id = event_id
            self.message_id = data.get("assistant_message_id")
        elif type_ == "token":
            seq = int(data["seq"])
            self.token_ids[seq] = event_id
            self.last_seq = max(self.last_seq, seq)
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()
        return event

    def since(self, after: int) -> list[BufferedEvent]:
        """Buffered events with an id above `after`, in order."""
        return self.events[bisect.bisect_right(self._ids, after) :]

    def resume_point(self, last_seq: int) -> int | None:
        """The buffer id after which a client holding tokens 1..last_seq resumes, if known."""
        if last_seq == 0:
            return self.start_id
        return self.token_ids.get(last_seq)

    def text(self) -> str:
        """The streamed text so far."""
        return "".join(e.data["delta"] for e in self.events if e.type == "token")

    def finish(self, state: str) -> None:
        """Mark the answer finished and release every follower."""
        if self.finished_at is not None:
            return
        self.state = state
        self.finished_at = time.monotonic()
        self._done.set()
        self._wake.set()

    async def wait(self) -> None:
        """Until the answer has finished."""
        await self._done.wait()

    async def follow(self, after: int = 0) -> AsyncIterator[BufferedEvent]:
        """Events after `after`, then each new one as it comes, until the answer ends."""
        position = after
        while True:
            # Taken before reading, so an event added meanwhile cannot be missed.
            wake = self._wake
            pending = self.since(position)
            if pending:
                for event in pending:
                    position = event.id
                    yield event
                continue
            if self.finished_at is not None:
                return
            await wake.wait()

    def info(self) -> dict[str, Any]:
        """What a client needs to attach to or resume this answer."""
        return {
            "generation_id": self.id,
            "message_id": self.message_id,
            "state": self.state,
            "last_seq": self.last_seq,
            "last_event_id": self.last_id,
        }
