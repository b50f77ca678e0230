"""GenerationHub: each answer is an owned task whose numbered events any worker can replay.

An answer runs independently of any client: HTTP, SSE and WebSocket clients only watch it.
Every engine event is appended to the generation's buffer with a monotonic id (1, 2, 3…)
and to its broker stream (a Redis Stream with a TTL, entry n = event n), so any worker can
replay exactly the events a client missed and then follow it live, including an answer no
client of that worker watched: a worker that does not run an answer keeps a *mirror* of it,
filled from the stream by one reader. A lease on the conversation (renewed while the answer
runs) makes it the only answer of its conversation on every worker; a stop sent to any worker
reaches the one running it over the control channel. When a worker dies mid-answer its lease
lapses: another worker adopts the answer, stores the streamed text as incomplete and appends
CHAT_012 to the stream, which ends it for every follower.

Buffers of finished answers are kept for `retention` seconds so a resume just after the end
still works. Only `stop` (or server shutdown) ends an answer early: its task is cancelled,
which makes the engine store the partial text as an "incomplete" message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing, suppress
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from studyrag.api.answer_buffer import BufferedEvent, Generation
from studyrag.api.chat_metrics import CHAT_AREA, ChatMetrics
from studyrag.backends.broker.base import Broker, follow_channel
from studyrag.errors import (
    AnswerLost,
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

T = TypeVar("T")

CHANNEL_PREFIX = "studyrag:chat:"
CONTROL_CHANNEL = "studyrag:chat-control"
# The answers running on some worker (generation id -> its conversation and message).
ANSWERS_REGISTRY = "studyrag:chat-answers"
# How long a stopped answer may take to store itself before stop() gives up waiting.
STOP_WAIT = 15.0
# A mirrored answer whose stream has been silent this long, with nobody adopting it (its
# stream lost with a Redis restart), is ended on this worker.
MIRROR_TIMEOUT = 120.0
# The lease of a running answer: renewed every third of it, so a dead worker's answers are
# adopted within about LEASE_TTL + LEASE_TTL / 3 seconds. Long enough that an event loop
# stalled by a loaded machine does not lose a live answer to adoption.
LEASE_TTL = 10.0
# How long a mirror's reader waits on the stream before checking the answer's lease.
FOLLOW_BLOCK = 1.0
# Entries kept per answer stream: far above any answer's events (max_tokens + 4).
STREAM_MAXLEN = 10_000
TERMINAL = ("done", "error")

__all__ = [
    "CHAT_AREA",
    "BufferedEvent",
    "ChatMetrics",
    "Generation",
    "GenerationHub",
    "channel",
]


def channel(conversation_id: str) -> str:
    """The broker channel of one conversation."""
    return f"{CHANNEL_PREFIX}{conversation_id}"


def events_stream(gen_id: str) -> str:
    """The broker stream of one answer's numbered events."""
    return f"studyrag:chat-events:{gen_id}"


def lease_key(conversation_id: str) -> str:
    """Held (by generation id) while an answer of the conversation runs on some worker."""
    return f"studyrag:chat-running:{conversation_id}"


def meta_key(gen_id: str) -> str:
    return f"studyrag:chat-gen:{gen_id}"


def latest_key(conversation_id: str) -> str:
    return f"studyrag:chat-latest:{conversation_id}"


def message_key(message_id: str) -> str:
    return f"studyrag:chat-message:{message_id}"


def adopt_key(gen_id: str) -> str:
    return f"studyrag:chat-adopt:{gen_id}"


class GenerationHub:
    """At most one answer per conversation on all workers; owns their tasks and streams."""

    def __init__(
        self,
        *,
        chat: ChatEngine | None,
        conversations: ConversationManager,
        broker: Broker,
        retention: float = 300.0,
        keep_finished: int = 1000,
        lease_ttl: float = LEASE_TTL,
        metrics: Metrics | None = None,
    ) -> None:
        self.chat = chat
        self.conversations = conversations
        self.broker = broker
        self.retention = retention
        self.keep_finished = keep_finished
        self.lease_ttl = lease_ttl
        self.origin = uuid.uuid4().hex[:12]
        self.metrics = ChatMetrics(metrics)
        self.metrics.metrics.watch(
            self.metrics.metrics.generations_in_flight, lambda: float(self.in_flight)
        )
        self._running: dict[str, Generation] = {}  # conversation id -> answer running here
        self._gens: dict[str, Generation] = {}  # generation id -> every kept answer, mirrors too
        self._by_message: dict[str, Generation] = {}
        self._finished: deque[Generation] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._followers: dict[str, asyncio.Task[None]] = {}  # mirror id -> its stream reader
        self._control: asyncio.Task[None] | None = None
        self._upkeep: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[Generation], None]] = []
        self._closing = False

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Listen for stop requests; keep this worker's leases and adopt answers of dead ones."""
        self._control = asyncio.create_task(self._listen_control(), name="generation-control")
        self._upkeep = asyncio.create_task(self._upkeep_loop(), name="generation-upkeep")

    async def aclose(self) -> None:
        """Cancel every running answer (each is stored as incomplete) and stop listening."""
        self._closing = True
        for gen in list(self._running.values()):
            await self._cancel(gen)
        background = [
            t for t in (self._control, self._upkeep, *self._followers.values()) if t is not None
        ]
        for task in background:
            task.cancel()
        tasks = [*background, *self._tasks]
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_WAIT)
        if self._tasks:  # answers whose question was being stored when shutdown began
            await asyncio.wait(set(self._tasks), timeout=STOP_WAIT)
        if self.chat is not None:
            await self.chat.drain()

    def add_listener(self, callback: Callable[[Generation], None]) -> None:
        """Call `callback(gen)` when an answer starts here or a mirror of one is made."""
        self._listeners.append(callback)

    # --- queries -------------------------------------------------------------------------
    def current(self, conversation_id: str) -> Generation | None:
        """The answer this worker is generating in the conversation, if any."""
        return self._running.get(conversation_id)

    def latest(self, conversation_id: str) -> Generation | None:
        """This worker's running answer, else the most recent one it still keeps."""
        gen = self.current(conversation_id)
        if gen is not None:
            return gen
        self._prune()
        for done in reversed(self._finished):
            if done.conversation_id == conversation_id:
                return done
        return None

    def by_message(self, message_id: str) -> Generation | None:
        """The kept answer (here or mirrored) whose assistant message is `message_id`."""
        self._prune()
        return self._by_message.get(message_id)

    async def find_current(self, conversation_id: str) -> Generation | None:
        """The answer being generated in the conversation on any worker (mirrored if remote)."""
        gen = self._running.get(conversation_id)
        if gen is not None:
            return gen
        owner = await self._shared(self.broker.get(lease_key(conversation_id)))
        if owner is None:
            return None
        gen = await self._load(owner)
        return gen if gen is not None and gen.running else None

    async def find_latest(self, conversation_id: str) -> Generation | None:
        """The running answer, else the conversation's most recent one still kept anywhere."""
        gen = await self.find_current(conversation_id)
        if gen is not None:
            return gen
        latest_id = await self._shared(self.broker.get(latest_key(conversation_id)))
        if latest_id is not None:
            gen = await self._load(latest_id)
            if gen is not None:
                return gen
        return self.latest(conversation_id)

    async def find_by_message(self, message_id: str) -> Generation | None:
        """The kept answer whose assistant message is `message_id`, from any worker."""
        gen = self.by_message(message_id)
        if gen is not None:
            return gen
        gen_id = await self._shared(self.broker.get(message_key(message_id)))
        return await self._load(gen_id) if gen_id is not None else None

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def stats(self) -> dict[str, Any]:
        """Answers in flight here and (as far as this worker follows them) elsewhere."""
        return {
            "in_flight": self.in_flight,
            "in_flight_elsewhere": sum(1 for g in self._gens.values() if not g.local and g.running),
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
        busy = self._running.get(key)
        if busy is not None:
            raise GenerationInProgress(
                "An answer is already being generated in this conversation.",
                details={"message_id": busy.message_id, "conversation_id": conversation_id},
            )
        # Reserved before the first await, so a concurrent second message here sees it; the
        # lease then makes it the only answer of the conversation on every worker.
        self._running[key] = gen
        self._gens[gen.id] = gen
        options = dict(options or {})
        stream: AsyncGenerator[Any, None] | None = None
        leased: str | None = None
        try:
            if conversation_id is not None:
                await self._take_lease(conversation_id, gen)
                leased = conversation_id
                if not options.get("template"):
                    # Raises ConversationNotFound early; supplies the conversation's template.
                    conversation = await self.conversations.get(conversation_id)
                    template = conversation.metadata.get("template")
                    # Metadata stored before templates were validated may hold anything; a
                    # non-string would crash the engine's lookup (500) on every later message.
                    options["template"] = template if isinstance(template, str) else None
            else:
                await self._shared(self.broker.ping(), refusing=True)
            stream = self.chat.stream_message(message, conversation_id=conversation_id, **options)
            first = await anext(stream)
            if conversation_id is None:
                new_id = first.to_dict()["conversation"]["id"]
                await self._take_lease(new_id, gen)
                leased = new_id
        except BaseException:
            self._running.pop(key, None)
            self._gens.pop(gen.id, None)
            if stream is not None:
                await stream.aclose()
            if leased is not None:
                with suppress(StudyRAGError):
                    await self.broker.release(lease_key(leased), gen.id)
            raise
        if conversation_id is None:
            del self._running[key]
            gen.conversation_id = leased or ""
            self._running[gen.conversation_id] = gen
        gen.leased = True
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
        self._announce(gen)
        if gen.stop_requested or self._closing:
            # Stopped, or the server began to shut down, while the question was stored.
            gen.stop_requested = True
            await self._cancel(gen)
        return gen

    async def _take_lease(self, conversation_id: str, gen: Generation) -> None:
        """Hold the conversation for `gen` on every worker, or refuse (CHAT_007 / CHAT_011)."""
        key = lease_key(conversation_id)
        if await self._shared(self.broker.claim(key, gen.id, ttl=self.lease_ttl), refusing=True):
            return
        details: dict[str, Any] = {"conversation_id": conversation_id}
        with suppress(StudyRAGError):
            owner = await self.broker.get(key)
            other = await self._load(owner) if owner is not None else None
            details["message_id"] = other.message_id if other is not None else None
        raise GenerationInProgress(
            "An answer is already being generated in this conversation.", details=details
        )

    async def stop(self, conversation_id: str) -> Generation | None:
        """Stop the running answer, wherever it runs (stored as incomplete); wait until stored."""
        try:
            gen = await self.find_current(conversation_id)
        except BrokerUnavailable:
            gen = self._running.get(conversation_id)  # the broker is down: what runs here
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
                # Shutdown: the engine has stored the partial answer; followers elsewhere
                # learn the end from the stream instead of waiting for the lease to lapse.
                with suppress(Exception):
                    lost = AnswerLost(
                        "The server stopped while answering; the text so far is stored as "
                        "incomplete."
                    )
                    await asyncio.wait_for(
                        self._append(gen, "error", _error_data(lost, gen.message_id)), 2.0
                    )
                raise
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
            with suppress(Exception):
                await asyncio.wait_for(self._release(gen), 2.0)

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
        # The local buffer is the record for this worker's clients; a broker outage must not
        # kill the answer itself, only the view of it from other workers.
        try:
            await self.broker.append(
                events_stream(gen.id),
                event.id,
                {"type": type_, "data": data},
                maxlen=STREAM_MAXLEN,
                ttl=self.retention,
            )
            if type_ == "start" or type_ in TERMINAL:
                await self._share_pointers(gen)
            if type_ == "start":
                meta = self._meta(gen)
                await self.broker.register(ANSWERS_REGISTRY, gen.id, meta)
                await self.broker.publish(
                    channel(gen.conversation_id),
                    {
                        "kind": "gen",
                        "gen_id": gen.id,
                        "conversation_id": gen.conversation_id,
                        "origin": self.origin,
                    },
                )
        except StudyRAGError as exc:
            self.metrics.error(BrokerUnavailable.error_code)
            log.warning("Sharing answer %s event %d failed: %s", gen.id, event.id, exc.message)

    def _meta(self, gen: Generation) -> str:
        return json.dumps(
            {
                "conversation_id": gen.conversation_id,
                "message_id": gen.message_id,
                "origin": self.origin,
            }
        )

    async def _share_pointers(self, gen: Generation) -> None:
        """Where any worker finds this answer: by id, as its conversation's latest, by message."""
        ttl = self.retention
        await self.broker.put(meta_key(gen.id), self._meta(gen), ttl=ttl)
        await self.broker.put(latest_key(gen.conversation_id), gen.id, ttl=ttl)
        if gen.message_id:
            await self.broker.put(message_key(gen.message_id), gen.id, ttl=ttl)

    async def _release(self, gen: Generation) -> None:
        """After the terminal event is in the stream: free the conversation everywhere."""
        if gen.leased:
            await self.broker.release(lease_key(gen.conversation_id), gen.id)
        await self.broker.unregister(ANSWERS_REGISTRY, gen.id)

    async def _publish_safely(self, name: str, message: dict[str, Any]) -> None:
        try:
            await self.broker.publish(name, message)
        except StudyRAGError as exc:
            self.metrics.error(BrokerUnavailable.error_code)
            log.warning("Publishing to %s failed: %s", name, exc.message)

    async def _shared(self, call: Awaitable[T], *, refusing: bool = False) -> T:
        """Await a broker call; its failure is CHAT_011, saying this worker's view is partial."""
        try:
            return await call
        except StudyRAGError as exc:
            self.metrics.error(BrokerUnavailable.error_code)
            what = "takes no new answers" if refusing else "cannot see answers of other workers"
            raise BrokerUnavailable(
                f"This worker cannot reach the message broker, so it {what} until the broker "
                f"is back ({exc.message}).",
                hint="Start Redis (check with `redis-cli ping`); GET /health shows the "
                "broker's state. Other workers may still answer.",
            ) from exc

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

    def _announce(self, gen: Generation) -> None:
        for callback in self._listeners:
            try:
                callback(gen)
            except Exception:  # a listener's bug must not break the answer
                log.exception("Generation listener failed")

    # --- answers of other workers --------------------------------------------------------
    async def mirror(
        self, gen_id: str, conversation_id: str, *, origin: str | None = None
    ) -> Generation | None:
        """This worker's copy of an answer another worker runs, read from its stream.

        A mirror is filled with what the stream holds, then follows it (one reader per
        mirror, whatever the number of clients) until its terminal event.
        """
        gen = self._gens.get(gen_id)
        if gen is not None:
            return gen
        if origin == self.origin:
            return None  # ours, already pruned
        entries = await self._shared(self.broker.read(events_stream(gen_id)))
        gen = self._gens.get(gen_id)
        if gen is not None:  # made by another caller meanwhile
            return gen
        gen = Generation(gen_id=gen_id, conversation_id=conversation_id, local=False)
        self._gens[gen_id] = gen
        for entry_id, entry in entries:
            self._mirror_add(gen, entry_id, entry)
        if gen.finished_at is None and not self._closing:
            task = asyncio.create_task(self._follow_remote(gen), name=f"mirror-{gen_id}")
            self._followers[gen_id] = task
            task.add_done_callback(partial(forget_task, self._followers, gen_id))
        self._announce(gen)
        return gen

    async def _load(self, gen_id: str) -> Generation | None:
        gen = self._gens.get(gen_id)
        if gen is not None:
            return gen
        raw = await self._shared(self.broker.get(meta_key(gen_id)))
        if raw is None:
            return None
        meta = json.loads(raw)
        return await self.mirror(gen_id, meta["conversation_id"], origin=meta.get("origin"))

    def _mirror_add(self, gen: Generation, entry_id: int, entry: dict[str, Any]) -> None:
        if gen.finished_at is not None or entry_id <= gen.last_id:
            return
        type_, data = entry["type"], entry["data"]
        gen.add(entry_id, type_, data)
        if gen.message_id:
            self._by_message.setdefault(gen.message_id, gen)
        if type_ == "error":
            self._finish(gen, "error")
        elif type_ == "done":
            stopped = bool((data.get("metadata") or {}).get("stopped"))
            self._finish(gen, "stopped" if stopped else "complete")

    async def _follow_remote(self, gen: Generation) -> None:
        """Feed a mirror from its stream; when no worker holds the answer any more, adopt it."""
        delay = 0.25
        quiet_since = time.monotonic()
        stream = events_stream(gen.id)
        while gen.finished_at is None:
            try:
                entries = await self.broker.read(stream, after=gen.last_id, block=FOLLOW_BLOCK)
                if entries:
                    for entry_id, entry in entries:
                        self._mirror_add(gen, entry_id, entry)
                    quiet_since = time.monotonic()
                    delay = 0.25
                    continue
                if await self.broker.get(lease_key(gen.conversation_id)) == gen.id:
                    continue
                # Nobody holds it: its worker ended it (read again) or died (adopt it).
                for entry_id, entry in await self.broker.read(stream, after=gen.last_id):
                    self._mirror_add(gen, entry_id, entry)
                if gen.finished_at is None:
                    await self._adopt(gen.id, gen.conversation_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a broker outage is logged and retried
                log.warning("Following answer %s failed (%s); retrying", gen.id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            if gen.finished_at is None and time.monotonic() - quiet_since > MIRROR_TIMEOUT:
                # Its stream is gone (Redis lost it) and nobody ended it: end the wait here.
                lost = AnswerLost("The answer stopped arriving from the worker generating it.")
                gen.add(gen.last_id + 1, "error", _error_data(lost, gen.message_id))
                self._finish(gen, "lost")

    async def _adopt(self, gen_id: str, conversation_id: str) -> None:
        """End an answer whose worker died: store what was streamed, append the error event.

        Exactly one worker adopts an answer (a claim on its adopt key); it writes the text of
        the answer's stream into the stored message (incomplete) and appends CHAT_012, which
        ends every mirror and every client following it on any worker.
        """
        if not await self.broker.claim(adopt_key(gen_id), self.origin, ttl=self.retention):
            return
        stream = events_stream(gen_id)
        entries = await self.broker.read(stream)
        if any(entry["type"] in TERMINAL for _, entry in entries):
            await self.broker.unregister(ANSWERS_REGISTRY, gen_id)
            return
        message_id: str | None = None
        text: list[str] = []
        sources: list[Any] | None = None
        for _, entry in entries:
            data = entry["data"]
            if entry["type"] == "start":
                message_id = data.get("assistant_message_id")
            elif entry["type"] == "sources":
                sources = data.get("sources")
            elif entry["type"] == "token":
                text.append(str(data.get("delta", "")))
        if message_id is not None:
            try:
                stored = await self.conversations.get_message(message_id)
                if stored.status == "incomplete" and not stored.content:
                    metadata = dict(stored.metadata) | {"lost": True, "adopted_by": self.origin}
                    await self.conversations.update_message(
                        message_id,
                        content="".join(text),
                        status="incomplete",
                        sources=sources,
                        metadata=metadata,
                    )
            except StudyRAGError as exc:
                log.warning("Storing lost answer %s failed: %s", gen_id, exc.message)
        lost = AnswerLost("The worker generating this answer stopped before it ended.")
        last = entries[-1][0] if entries else 0
        await self.broker.append(
            stream,
            last + 1,
            {"type": "error", "data": _error_data(lost, message_id)},
            maxlen=STREAM_MAXLEN,
            ttl=self.retention,
        )
        await self.broker.unregister(ANSWERS_REGISTRY, gen_id)
        self.metrics.error(AnswerLost.error_code)
        log.warning(
            "Adopted answer %s of conversation %s: its worker stopped; stored %d characters",
            gen_id,
            conversation_id,
            len("".join(text)),
        )

    async def _upkeep_loop(self) -> None:
        """Renew this worker's leases; adopt answers whose worker has died (supervised)."""
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            try:
                await self._keep_leases()
                await self._sweep_orphans()
            except asyncio.CancelledError:
                raise
            except StudyRAGError as exc:
                log.warning("Answer upkeep failed: %s", exc.message)
            except Exception:  # a bug here must not end the upkeep of every answer
                log.exception("Answer upkeep failed")

    async def _keep_leases(self) -> None:
        for conversation_id, gen in list(self._running.items()):
            if not gen.leased or not gen.running:
                continue
            key = lease_key(conversation_id)
            if await self.broker.renew(key, gen.id, ttl=self.lease_ttl) or not gen.running:
                continue  # (a renewal that lost the race with the answer's own release)
            if await self.broker.get(adopt_key(gen.id)) is not None:
                # This worker stalled past its lease and another one declared the answer lost
                # to every client: stop generating what nobody receives any more.
                log.warning("Answer %s was adopted by another worker; stopping it here", gen.id)
                gen.stop_requested = True
                await self._cancel(gen)
                continue
            # Redis came back empty (restarted): hold the answer again, and say where it is.
            if await self.broker.claim(key, gen.id, ttl=self.lease_ttl):
                if not gen.running:  # it ended meanwhile: never leave its lease behind
                    await self.broker.release(key, gen.id)
                    continue
                log.warning("Lease of answer %s was lost; taken again", gen.id)
                if gen.message_id:
                    await self._share_pointers(gen)
                    await self.broker.register(ANSWERS_REGISTRY, gen.id, self._meta(gen))

    async def _sweep_orphans(self) -> None:
        """Answers registered as running whose lease lapsed: their worker died unseen."""
        for gen_id, raw in (await self.broker.registered(ANSWERS_REGISTRY)).items():
            mine = self._gens.get(gen_id)
            if mine is not None and mine.local:
                continue
            conversation_id = str(json.loads(raw).get("conversation_id"))
            if await self.broker.get(lease_key(conversation_id)) != gen_id:
                await self._adopt(gen_id, conversation_id)

    async def _listen_control(self) -> None:
        """Stop requests from other workers for answers running here; resubscribes on failure."""

        async def take(message: dict[str, Any]) -> None:
            gen = self._gens.get(str(message.get("generation_id")))
            if message.get("action") == "stop" and gen is not None and gen.local and gen.running:
                gen.stop_requested = True
                await self._cancel(gen)

        await follow_channel(self.broker, CONTROL_CHANNEL, take, what="Control channel")


def forget_task(tasks: dict[str, asyncio.Task[None]], key: str, _task: object) -> None:
    """Done callback: drop a finished task from its owner's table."""
    tasks.pop(key, None)


def _error_data(error: StudyRAGError, message_id: str | None) -> dict[str, Any]:
    """An `error` event's data: the house error shape (without request id) and the message."""
    body = error.to_dict(None)
    body.pop("request_id", None)
    return {**body, "message_id": message_id}
