"""GenerationHub: each answer is an owned task whose numbered events are kept for replay.

An answer runs independently of any client: HTTP, SSE and WebSocket clients only watch it.
Every engine event is appended to the generation's buffer with a monotonic id (1, 2, 3…)
and published on the conversation's broker channel, so WebSocket clients on any worker see
it, while late joiners, resuming clients and SSE `Last-Event-ID` replay from the buffer.
Buffers of finished answers are kept for `retention` seconds so a resume just after the end
still works. Only `stop` (or server shutdown) ends an answer early: its task is cancelled,
which makes the engine store the partial text as an "incomplete" message.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, suppress
from typing import TYPE_CHECKING, Any, cast

from studyrag.backends.broker.base import Broker
from studyrag.errors import (
    BrokerUnavailable,
    GenerationInProgress,
    LLMUnavailable,
    StudyRAGError,
)
from studyrag.observability.metrics import Metrics

if TYPE_CHECKING:
    from studyrag.chat.conversations import ConversationManager
    from studyrag.chat.engine import ChatEngine

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "studyrag:chat:"
CONTROL_CHANNEL = "studyrag:chat-control"
# How long a stopped answer may take to store itself before stop() gives up waiting.
STOP_WAIT = 15.0
# A mirrored answer from another worker that has been silent this long is presumed lost.
MIRROR_TIMEOUT = 120.0
TERMINAL = ("done", "error")
# The `area` label of the errors the chat transport reports (see Metrics.errors).
CHAT_AREA = "chat"


def channel(conversation_id: str) -> str:
    """The broker channel of one conversation."""
    return f"{CHANNEL_PREFIX}{conversation_id}"


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


class ChatMetrics:
    """Live chat figures since start-up for /api/chat/stats, read from the metrics registry.

    Nothing is counted here: every figure is a sample of the registry GET /metrics renders,
    so the two cannot disagree. Response times are the `studyrag_answer_duration_seconds`
    histogram: count and mean exact, p95 estimated from its buckets as PromQL would.
    """

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics()

    def error(self, code: str) -> None:
        """Count one error reported to a chat client."""
        self.metrics.error(code, CHAT_AREA)

    def token(self) -> None:
        """Count one answer piece streamed."""
        self.metrics.answer_tokens.inc()

    def finished(self, outcome: str, seconds: float | None) -> None:
        """Count an answer's outcome; a complete one's duration goes into the histogram."""
        self.metrics.answers.labels(outcome=outcome).inc()
        if outcome == "complete" and seconds is not None:
            self.metrics.answer_duration.observe(seconds)

    @property
    def tokens_generated(self) -> int:
        return int(self.metrics.value("studyrag_answer_tokens_total"))

    @property
    def errors_by_code(self) -> dict[str, int]:
        return {
            labels["code"]: int(value)
            for labels, value in self.metrics.samples("studyrag_errors_total")
            if labels.get("area") == CHAT_AREA
        }

    def snapshot(self) -> dict[str, Any]:
        """Mean and p95 response time (seconds) of complete answers, and the counters."""
        m = self.metrics
        count = int(m.value("studyrag_answer_duration_seconds_count"))
        total = m.value("studyrag_answer_duration_seconds_sum")
        p95 = m.quantile(0.95, "studyrag_answer_duration_seconds")
        return {
            "answers": {
                labels["outcome"]: int(value)
                for labels, value in m.samples("studyrag_answers_total")
            },
            "response_time": {
                "count": count,
                "mean_seconds": round(total / count, 4) if count else None,
                "p95_seconds": round(p95, 4) if p95 is not None else None,
            },
            "tokens_generated": self.tokens_generated,
            "errors_by_code": self.errors_by_code,
        }


class GenerationHub:
    """At most one answer per conversation; owns their tasks, buffers and broker publishing."""

    def __init__(
        self,
        *,
        chat: ChatEngine | None,
        conversations: ConversationManager,
        broker: Broker,
        retention: float = 300.0,
        keep_finished: int = 1000,
        metrics: Metrics | None = None,
    ) -> None:
        self.chat = chat
        self.conversations = conversations
        self.broker = broker
        self.retention = retention
        self.keep_finished = keep_finished
        self.origin = uuid.uuid4().hex[:12]
        self.metrics = ChatMetrics(metrics)
        self.metrics.metrics.watch(
            self.metrics.metrics.generations_in_flight, lambda: float(self.in_flight)
        )
        self._running: dict[str, Generation] = {}  # conversation id -> running answer
        self._gens: dict[str, Generation] = {}  # generation id -> every kept answer
        self._by_message: dict[str, Generation] = {}
        self._finished: deque[Generation] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._control: asyncio.Task[None] | None = None
        self._closing = False

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Listen for stop requests addressed to answers this worker runs."""
        self._control = asyncio.create_task(self._listen_control(), name="generation-control")

    async def aclose(self) -> None:
        """Cancel every running answer (each is stored as incomplete) and stop listening."""
        self._closing = True
        for gen in [g for g in self._running.values() if g.local]:
            await self._cancel(gen)
        if self._control is not None:
            self._control.cancel()
        tasks = [t for t in (self._control, *self._tasks) if t is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_WAIT)
        if self._tasks:  # answers whose question was being stored when shutdown began
            await asyncio.wait(set(self._tasks), timeout=STOP_WAIT)
        if self.chat is not None:
            await self.chat.drain()

    # --- queries -------------------------------------------------------------------------
    def current(self, conversation_id: str) -> Generation | None:
        """The answer being generated in this conversation (here or, mirrored, elsewhere)."""
        gen = self._running.get(conversation_id)
        if gen is not None and not gen.local:
            if time.monotonic() - gen.last_activity > MIRROR_TIMEOUT:
                self._finish(gen, "lost")
                return None
        return gen

    def latest(self, conversation_id: str) -> Generation | None:
        """The running answer, else the most recent one still kept."""
        gen = self.current(conversation_id)
        if gen is not None:
            return gen
        self._prune()
        for done in reversed(self._finished):
            if done.conversation_id == conversation_id:
                return done
        return None

    def by_message(self, message_id: str) -> Generation | None:
        """The kept answer whose assistant message is `message_id`."""
        self._prune()
        return self._by_message.get(message_id)

    @property
    def in_flight(self) -> int:
        return sum(1 for g in self._running.values() if g.local)

    def stats(self) -> dict[str, Any]:
        """Answers in flight here and elsewhere, plus the live metrics."""
        return {
            "in_flight": self.in_flight,
            "in_flight_elsewhere": len(self._running) - self.in_flight,
            "kept_buffers": len(self._gens),
            **self.metrics.snapshot(),
        }

    # --- starting and stopping -----------------------------------------------------------
    async def start_answer(
        self,
        message: str,
        *,
        conversation_id: str | None,
        options: dict[str, Any] | None = None,
    ) -> Generation:
        """Store the question and start the answer in an owned task; raises when invalid."""
        # The first engine event (`start`) is awaited here, so an unknown conversation or an
        # invalid request is the caller's error; recording it and the rest of the answer run
        # in the task.
        if self._closing:
            raise LLMUnavailable(
                "The server is shutting down.", hint="Send the message again in a moment."
            )
        if self.chat is None:
            raise LLMUnavailable(
                "This server runs without a chat model.",
                hint="Start it with chat enabled (STUDYRAG_LLM__PROVIDER=llamacpp).",
            )
        gen = Generation(gen_id=uuid.uuid4().hex, conversation_id=conversation_id or "", local=True)
        # A new conversation has no id until the engine creates it; nothing can collide.
        key = conversation_id or f"new:{gen.id}"
        busy = self.current(key)
        if busy is not None:
            raise GenerationInProgress(
                "An answer is already being generated in this conversation.",
                details={"message_id": busy.message_id, "conversation_id": conversation_id},
            )
        # Reserved before the first await, so a concurrent second message sees it.
        self._running[key] = gen
        self._gens[gen.id] = gen
        options = dict(options or {})
        stream: AsyncGenerator[Any, None] | None = None
        try:
            if conversation_id is not None and not options.get("template"):
                # Raises ConversationNotFound early; supplies the conversation's own template.
                conversation = await self.conversations.get(conversation_id)
                template = conversation.metadata.get("template")
                # Metadata stored before templates were validated may hold anything; a
                # non-string would crash the engine's lookup (500) on every later message.
                options["template"] = template if isinstance(template, str) else None
            stream = self.chat.stream_message(message, conversation_id=conversation_id, **options)
            first = await anext(stream)
        except BaseException:
            self._running.pop(key, None)
            self._gens.pop(gen.id, None)
            if stream is not None:
                await stream.aclose()
            raise
        if conversation_id is None:
            del self._running[key]
            gen.conversation_id = first.to_dict()["conversation"]["id"]
            self._running[gen.conversation_id] = gen
        # No await between the reservation's try and the task: from here on the task owns the
        # answer, and its `finally` releases the conversation. Recording `start` here instead
        # (a broker publish) could be cancelled with the caller, e.g. a WebSocket reader of a
        # client dropped as too slow, and leave the conversation reserved with no task.
        task = asyncio.create_task(
            self._run(gen, stream, first), name=f"answer-{gen.conversation_id}"
        )
        gen.task = task
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        if gen.stop_requested or self._closing:
            # Stopped, or the server began to shut down, while the question was stored.
            gen.stop_requested = True
            await self._cancel(gen)
        return gen

    async def stop(self, conversation_id: str) -> Generation | None:
        """Stop the running answer (stored as incomplete) and wait until it is stored."""
        gen = self.current(conversation_id)
        if gen is None:
            return None
        gen.stop_requested = True
        if gen.local:
            await self._cancel(gen)
        else:
            await self._publish_safely(CONTROL_CHANNEL, {"action": "stop", "generation_id": gen.id})
        with suppress(TimeoutError):
            await asyncio.wait_for(gen.wait(), timeout=STOP_WAIT)
        return gen

    async def _cancel(self, gen: Generation) -> None:
        # Only a started task reaches its try/finally, which closes the engine's stream.
        if gen.task is None:
            return
        if not gen.task.done():
            await gen.task_started.wait()
        gen.task.cancel()

    # --- the answer task -----------------------------------------------------------------
    async def _run(self, gen: Generation, stream: AsyncGenerator[Any, None], first: Any) -> None:
        gen.task_started.set()
        state = "complete"
        try:
            async with aclosing(stream):
                await self._record(gen, first)
                async for event in stream:
                    await self._record(gen, event)
            if gen.exception is not None or (gen.events and gen.events[-1].type == "error"):
                state = "error"
        except asyncio.CancelledError:
            if not gen.stop_requested:
                state = "stopped"
                raise  # shutdown: the engine has stored the partial answer
            # A user's stop: not a failure of this task.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            state = "stopped"
            await self._record_stopped(gen)
        except Exception as exc:
            # A bug below the engine's own error handling; surfaced, never silent.
            log.exception("Answer %s in conversation %s failed", gen.id, gen.conversation_id)
            state = "error"
            error = exc if isinstance(exc, StudyRAGError) else None
            await self._append(
                gen,
                "error",
                {
                    "error_code": (error or StudyRAGError).error_code,
                    "message": error.message if error else "The answer failed unexpectedly.",
                    "details": {"hint": "Send the message again; the server log has the cause."},
                    "message_id": gen.message_id,
                },
            )
        finally:
            self._finish(gen, state)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("Answer task crashed", exc_info=task.exception())

    async def _record(self, gen: Generation, event: Any) -> None:
        data = event.to_dict()
        type_ = data.pop("type")
        if type_ == "error":
            gen.exception = getattr(event, "exception", None)
            self.metrics.error(str(data.get("error_code")))
        elif type_ == "token":
            self.metrics.token()
        await self._append(gen, type_, data)

    async def _record_stopped(self, gen: Generation) -> None:
        """After a stop: a `done` event carrying the stored, incomplete message."""
        message: dict[str, Any]
        try:
            stored = await self.conversations.get_message(gen.message_id or "")
            message = stored.to_dict()
        except StudyRAGError:
            # Deleted meanwhile (the conversation was deleted): report what was streamed.
            message = {
                "id": gen.message_id,
                "conversation_id": gen.conversation_id,
                "role": "assistant",
                "content": gen.text(),
                "status": "incomplete",
                "sources": [],
                "metadata": {},
            }
        try:
            conversation = (
                await self.conversations.get(gen.conversation_id, include_deleted=True)
            ).to_dict()
        except StudyRAGError:
            conversation = {"id": gen.conversation_id}
        metadata = dict(message.get("metadata") or {})
        metadata["stopped"] = True
        await self._append(
            gen, "done", {"message": message, "conversation": conversation, "metadata": metadata}
        )

    async def _append(self, gen: Generation, type_: str, data: dict[str, Any]) -> None:
        event = gen.add(gen.last_id + 1, type_, data)
        if type_ == "start" and gen.message_id:
            self._by_message[gen.message_id] = gen
        await self._publish_safely(
            channel(gen.conversation_id),
            {
                "kind": "gen",
                "origin": self.origin,
                "gen_id": gen.id,
                "conversation_id": gen.conversation_id,
                "message_id": gen.message_id,
                "id": event.id,
                "type": type_,
                "data": data,
            },
        )

    async def _publish_safely(self, name: str, message: dict[str, Any]) -> None:
        # The buffer is the record; a broker outage must not kill the answer itself.
        try:
            await self.broker.publish(name, message)
        except StudyRAGError as exc:
            self.metrics.error(BrokerUnavailable.error_code)
            log.warning("Publishing to %s failed: %s", name, exc.message)

    def _finish(self, gen: Generation, state: str) -> None:
        if gen.finished_at is not None:
            return
        gen.finish(state)
        if self._running.get(gen.conversation_id) is gen:
            del self._running[gen.conversation_id]
        if gen.local:
            elapsed = gen.finished_at - gen.started if gen.finished_at is not None else None
            self.metrics.finished(state, elapsed)
        self._finished.append(gen)
        self._prune()

    def _prune(self) -> None:
        horizon = time.monotonic() - self.retention
        while self._finished and (
            len(self._finished) > self.keep_finished
            or (self._finished[0].finished_at or 0) < horizon
        ):
            old = self._finished.popleft()
            self._gens.pop(old.id, None)
            if old.message_id and self._by_message.get(old.message_id) is old:
                del self._by_message[old.message_id]

    # --- other workers -------------------------------------------------------------------
    def observe(self, message: dict[str, Any]) -> Generation | None:
        """Mirror an answer another worker publishes, so clients here can attach and resume."""
        gen = self._gens.get(message["gen_id"])
        if gen is None:
            if message.get("origin") == self.origin:
                return None  # ours, already pruned
            gen = Generation(
                gen_id=message["gen_id"], conversation_id=message["conversation_id"], local=False
            )
            self._gens[gen.id] = gen
            self._running.setdefault(gen.conversation_id, gen)
        if gen.local or message["id"] <= gen.last_id or gen.finished_at is not None:
            return gen
        gen.add(message["id"], message["type"], message["data"])
        if gen.message_id:
            self._by_message.setdefault(gen.message_id, gen)
        if message["type"] in TERMINAL:
            self._finish(gen, "complete" if message["type"] == "done" else "error")
        return gen

    async def _listen_control(self) -> None:
        """Stop requests from other workers for answers running here; resubscribes on failure."""
        delay = 0.5
        while True:
            try:
                messages = cast(
                    AsyncGenerator[dict[str, Any], None], self.broker.subscribe(CONTROL_CHANNEL)
                )
                async with aclosing(messages):
                    delay = 0.5
                    async for message in messages:
                        gen = self._gens.get(str(message.get("generation_id")))
                        if message.get("action") == "stop" and gen is not None and gen.local:
                            if gen.running:
                                gen.stop_requested = True
                                await self._cancel(gen)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a broker outage is logged and retried
                log.warning("Control channel failed (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
