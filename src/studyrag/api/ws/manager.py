"""WebSocketManager: many clients per conversation, broker fan-out, one send queue per client.

Fan-out: each answer's events reach this worker's clients from the hub's buffer of it (one
watch task per answer with local clients): for an answer running here directly, for one
running elsewhere through its mirror, which one reader fills from the answer's broker stream.
Other frames (typing, conversation updates) and the news that an answer started elsewhere
come over the conversation's broker channel, to which each worker subscribes once per
conversation that has local clients. So any worker serves any client.

Each client has a bounded queue drained by its own writer task: a slow client never holds up
the others, and one whose queue overflows is closed with 4408. See docs/protocol.md.

Client caps (`api.ws_max_clients_per_conversation`, `..._per_address`) count every worker's
clients: each client holds a slot in the broker for its conversation and for its address,
renewed every SLOT_TTL / 3 while it is connected, so a killed worker's clients stop counting
within SLOT_TTL.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator
from contextlib import aclosing, suppress
from datetime import UTC, datetime
from functools import partial
from typing import Any, cast

from fastapi import WebSocket, WebSocketDisconnect

from studyrag.api.generations import Generation, GenerationHub, channel, forget_task
from studyrag.api.ws.frames import (
    CLOSE_GOING_AWAY,
    CLOSE_NOT_FOUND,
    CLOSE_OVERFLOW,
    dumps,
    error_frame,
    generation_frames,
)
from studyrag.backends.broker.base import Broker
from studyrag.config import Settings
from studyrag.errors import BrokerUnavailable, MessageNotFound, StudyRAGError, TooManyConnections

log = logging.getLogger(__name__)

# A client joining mid-answer may send `resume` first; live tokens wait this long for it.
JOIN_GRACE = 0.2
READY_TIMEOUT = 5.0
CLOSE_TIMEOUT = 2.0
# A writer that has not sent anything for this many ping intervals while frames wait is dead.
STALL_INTERVALS = 3
_MAX_CURSORS = 8
# A client's slots outlive a worker that dies without freeing them by at most this long.
SLOT_TTL = 30.0


class _Close:
    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class WSClient:
    """One connected socket: its metadata, its send queue and where it is in each answer."""

    def __init__(
        self,
        websocket: WebSocket,
        *,
        conversation_id: str,
        address: str,
        user_agent: str,
        queue_size: int,
    ) -> None:
        self.id = uuid.uuid4().hex[:16]
        self.websocket = websocket
        self.conversation_id = conversation_id
        self.address = address
        self.user_agent = user_agent[:200]
        self.connected_at = datetime.now(UTC)
        self.last_seen = time.time()
        self.last_sent = time.monotonic()
        self.limit = queue_size
        # A deque and one wake-up future instead of asyncio.Queue: this is the fan-out's hot
        # path. offer() enforces the limit, so a close can always be queued.
        self.queue: deque[str | _Close] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.closing = False
        self.writer: asyncio.Task[None] | None = None
        # The endpoint's task, cancelled (with `kill` set) to drop a client that is stuck.
        self.reader: asyncio.Task[Any] | None = None
        self.kill: tuple[int, str] | None = None
        # While False, live answer events wait in `pending` (a resume may replace them).
        self.attached = True
        self.pending: list[tuple[str, int, list[str]]] = []
        self.join_timer: asyncio.TimerHandle | None = None
        self.cursors: dict[str, int] = {}  # generation id -> last buffer id sent
        self.first_live: dict[str, int] = {}  # generation id -> first buffer id sent

    def offer(self, text: str) -> bool:
        """Queue a frame; False when the queue is full (the caller closes the client)."""
        if self.closing:
            return True
        if len(self.queue) >= self.limit:
            return False
        self._push(text)
        return True

    def _push(self, item: str | _Close) -> None:
        self.queue.append(item)
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_for_items(self) -> None:
        """Until something is queued."""
        while not self.queue:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    def close_soon(self, code: int, reason: str, *, drop_pending: bool) -> None:
        """Have the writer close the socket, after what is queued unless `drop_pending`."""
        if self.closing:
            return
        self.closing = True
        if drop_pending:
            self.queue.clear()
        self._push(_Close(code, reason))

    def mark_sent(self, gen_id: str, event_id: int, *, first: int | None = None) -> None:
        """Record that this answer's events up to `event_id` (from `first`) were queued."""
        self.cursors[gen_id] = event_id
        self.first_live.setdefault(gen_id, event_id if first is None else first)
        if len(self.cursors) > _MAX_CURSORS:
            oldest = next(iter(self.cursors))
            self.cursors.pop(oldest)
            self.first_live.pop(oldest, None)

    def info(self) -> dict[str, Any]:
        """Client metadata for stats."""
        return {
            "client_id": self.id,
            "conversation_id": self.conversation_id,
            "address": self.address,
            "user_agent": self.user_agent,
            "connected_at": self.connected_at.isoformat(),
            "last_seen": datetime.fromtimestamp(self.last_seen, UTC).isoformat(),
            "queued": len(self.queue),
        }


class WebSocketManager:
    """Connections per conversation, broker fan-out, per-client queues, pings and shutdown."""

    def __init__(self, *, broker: Broker, hub: GenerationHub, settings: Settings) -> None:
        self.broker = broker
        self.hub = hub
        self.api = settings.api
        self._conversations: dict[str, dict[str, WSClient]] = {}
        # client id -> the (group, member) slots it holds in the broker; slots of clients
        # gone wait in _to_free until the next connect or heartbeat frees them.
        self._slots: dict[str, tuple[tuple[str, str], ...]] = {}
        self._to_free: deque[tuple[str, str]] = deque()
        self._slot_keeper: asyncio.Task[None] | None = None
        self._left = asyncio.Event()  # set when a client leaves: free its slots now
        self._pumps: dict[str, asyncio.Task[None]] = {}
        self._ready: dict[str, asyncio.Event] = {}
        self._watches: dict[str, asyncio.Task[None]] = {}  # generation id -> its watch
        self._pinger: asyncio.Task[None] | None = None
        self._closing = False
        # Live figures live in the metrics registry, read by both /metrics and stats().
        self.metrics = hub.metrics.metrics
        self.metrics.watch(
            self.metrics.websocket_connections, lambda: float(self.connections), endpoint="chat"
        )
        hub.add_listener(self._started_here)

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Start the idle-ping loop and the heartbeat of the clients' slots."""
        self._pinger = asyncio.create_task(self._ping_loop(), name="ws-pinger")
        self._slot_keeper = asyncio.create_task(self._keep_slots(), name="ws-slots")

    async def aclose(self, code: int = CLOSE_GOING_AWAY) -> None:
        """Close every socket with `code` (1001: going away) and stop every task."""
        if self._closing:
            return
        self._closing = True
        clients = [c for group in self._conversations.values() for c in group.values()]
        for client in clients:
            client.close_soon(code, "server shutting down", drop_pending=True)
        writers = [c.writer for c in clients if c.writer is not None]
        if writers:
            _, late = await asyncio.wait(writers, timeout=CLOSE_TIMEOUT + 0.5)
            for task in late:
                task.cancel()
        for slots in self._slots.values():
            self._to_free.extend(slots)
        self._slots.clear()
        tasks = [
            t
            for t in (
                self._pinger,
                self._slot_keeper,
                *self._pumps.values(),
                *self._watches.values(),
            )
            if t is not None
        ]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)
        # Other workers see these clients gone now, not a SLOT_TTL later.
        with suppress(TimeoutError):
            await asyncio.wait_for(self._free_slots(), timeout=CLOSE_TIMEOUT)

    # --- connections ---------------------------------------------------------------------
    async def connect(self, websocket: WebSocket, conversation_id: str) -> WSClient:
        """Admit and register a client, wait until fan-out reaches it, start its writer."""
        if self._closing:
            raise TooManyConnections("The server is shutting down.", hint="Reconnect shortly.")
        address = websocket.client.host if websocket.client else "unknown"
        client = WSClient(
            websocket,
            conversation_id=conversation_id,
            address=address,
            user_agent=websocket.headers.get("user-agent", ""),
            queue_size=self.api.ws_send_queue,
        )
        clients = await self._take_slots(client)
        self._conversations.setdefault(conversation_id, {})[client.id] = client
        ready = self._ensure_pump(conversation_id)
        try:
            await asyncio.wait_for(ready.wait(), timeout=READY_TIMEOUT)
            # Looked up once the subscription listens: an answer starting from now on is
            # announced on it, one already running (on any worker) is found here.
            gen = await self.hub.find_current(conversation_id)
        except TimeoutError:
            self.disconnect(client)
            raise BrokerUnavailable(
                "The message broker did not answer; live updates are unavailable."
            ) from None
        except BaseException:
            self.disconnect(client)
            raise
        if gen is not None:
            client.attached = False
            loop = asyncio.get_running_loop()
            client.join_timer = loop.call_later(JOIN_GRACE, self.attach, client)
            self._ensure_watch(gen, after=gen.last_id)
        # First in the queue (the writer has not started): frames fanned out meanwhile follow.
        client.queue.appendleft(
            dumps(
                {
                    "type": "connected",
                    "client_id": client.id,
                    "conversation_id": conversation_id,
                    "clients": clients,
                    "generation": gen.info() if gen is not None else None,
                }
            )
        )
        client.writer = asyncio.create_task(self._write(client), name=f"ws-writer-{client.id}")
        return client

    def disconnect(self, client: WSClient) -> None:
        """Forget a client; the conversation's subscription ends with its last client."""
        if client.join_timer is not None:
            client.join_timer.cancel()
        if client.writer is not None and not client.writer.done():
            client.writer.cancel()
        slots = self._slots.pop(client.id, ())
        if slots:
            self._to_free.extend(slots)
            self._left.set()
        group = self._conversations.get(client.conversation_id)
        if group is None or group.pop(client.id, None) is None:
            return
        if not group:
            del self._conversations[client.conversation_id]
            pump = self._pumps.pop(client.conversation_id, None)
            self._ready.pop(client.conversation_id, None)
            if pump is not None:
                pump.cancel()

    async def _take_slots(self, client: WSClient) -> int:
        """Hold the client's slots in its conversation and its address, on every worker's
        count; TooManyConnections (RATE_002) when either is full. Returns the conversation's
        clients, this one included."""
        await self._free_slots()  # a client that just left here makes room first
        conversation = (f"studyrag:ws-conversation:{client.conversation_id}", client.id)
        address = (f"studyrag:ws-address:{client.address}", client.id)
        try:
            taken, clients = await self.broker.take_slot(
                *conversation, limit=self.api.ws_max_clients_per_conversation, ttl=SLOT_TTL
            )
            if not taken:
                raise TooManyConnections(
                    f"This conversation already has {clients} connected clients.",
                    details={"limit": self.api.ws_max_clients_per_conversation},
                    hint="Close another tab or window on this conversation.",
                )
            try:
                taken, _ = await self.broker.take_slot(
                    *address, limit=self.api.ws_max_clients_per_address, ttl=SLOT_TTL
                )
            except BaseException:
                self._to_free.append(conversation)
                self._left.set()
                raise
            if not taken:
                self._to_free.append(conversation)
                self._left.set()
                raise TooManyConnections(
                    "Too many WebSocket connections from your address.",
                    details={"limit": self.api.ws_max_clients_per_address},
                    hint="Close some connections and try again.",
                )
        except TooManyConnections:
            raise
        except StudyRAGError as exc:
            raise BrokerUnavailable(
                f"The message broker did not answer; live updates are unavailable ({exc.message})."
            ) from exc
        self._slots[client.id] = (conversation, address)
        return clients

    async def _free_slots(self) -> None:
        """Free the slots of clients gone; a failure leaves them to expire (SLOT_TTL)."""
        while self._to_free:
            group, member = self._to_free.popleft()
            try:
                await self.broker.drop_slot(group, member)
            except StudyRAGError as exc:
                log.warning("Could not free a WebSocket slot (%s); it expires by itself", exc)

    async def _keep_slots(self) -> None:
        """Free the slots of clients as they leave; renew the others' every SLOT_TTL / 3."""
        loop = asyncio.get_running_loop()
        renew_at = loop.time() + SLOT_TTL / 3
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._left.wait(), max(0.0, renew_at - loop.time()))
            self._left.clear()
            try:
                await self._free_slots()
                if loop.time() >= renew_at:
                    renew_at = loop.time() + SLOT_TTL / 3
                    held = [slot for slots in self._slots.values() for slot in slots]
                    await self.broker.keep_slots(held, ttl=SLOT_TTL)
            except StudyRAGError as exc:
                log.warning("Could not renew WebSocket slots: %s", exc)
            except Exception:  # a bug here must not let every client's slot lapse silently
                log.exception("WebSocket slot renewal failed")

    def clients(self, conversation_id: str) -> list[WSClient]:
        """The clients connected to this worker for one conversation."""
        return list(self._conversations.get(conversation_id, {}).values())

    @property
    def connections(self) -> int:
        """Chat sockets connected to this worker."""
        return sum(len(g) for g in self._conversations.values())

    @property
    def slow_clients_dropped(self) -> int:
        return int(self.metrics.value("studyrag_websocket_slow_clients_dropped_total"))

    def stats(self, *, with_clients: bool = False) -> dict[str, Any]:
        """Connections here, per conversation (and per client when asked)."""
        body: dict[str, Any] = {
            "connections": self.connections,
            "conversations": len(self._conversations),
            "clients_per_conversation": {c: len(g) for c, g in self._conversations.items()},
            "slow_clients_dropped": self.slow_clients_dropped,
        }
        if with_clients:
            body["clients"] = [c.info() for g in self._conversations.values() for c in g.values()]
        return body

    # --- sending -------------------------------------------------------------------------
    async def broadcast(
        self, conversation_id: str, frame: dict[str, Any], *, exclude: str | None = None
    ) -> None:
        """Send `frame` to every client of the conversation on every worker but `exclude`."""
        await self.broker.publish(
            channel(conversation_id), {"kind": "frame", "frame": frame, "exclude": exclude}
        )

    def send(self, client: WSClient, frame: dict[str, Any]) -> None:
        """Queue a frame for one client."""
        self._offer(client, dumps(frame))

    def _offer(self, client: WSClient, text: str) -> None:
        if not client.offer(text):
            self._kill(client, CLOSE_OVERFLOW, "send queue overflow")

    def _kill(self, client: WSClient, code: int, reason: str) -> None:
        """Drop a client that cannot keep up, at once, and close it with `code`."""
        # Its writer may be stuck on a full socket: it leaves the fan-out now, and its
        # endpoint is cancelled and then tries the close, which a client reading again sees.
        if client.kill is not None:
            return
        self.metrics.websocket_dropped.inc()
        log.warning("Dropping WebSocket client %s: %s", client.id, reason)
        client.kill = (code, reason)
        client.closing = True
        self.disconnect(client)
        if client.reader is not None:
            client.reader.cancel()

    # --- attaching to answers ------------------------------------------------------------
    def attach(self, client: WSClient) -> None:
        """End the join hold: deliver the held live events in order."""
        if client.attached:
            return
        client.attached = True
        if client.join_timer is not None:
            client.join_timer.cancel()
            client.join_timer = None
        held, client.pending = client.pending, []
        for gen_id, event_id, texts in held:
            self._deliver(client, gen_id, event_id, texts)

    async def resume(self, client: WSClient, message_id: str, last_seq: int) -> int:
        """Replay an answer after token `last_seq` to this client; returns frames queued."""
        gen = self.hub.by_message(message_id) or await self.hub.find_by_message(message_id)
        # From here on synchronous on purpose: nothing can be fanned out between the replay
        # and the cursor update, so the live stream continues exactly after the replayed part.
        if gen is None or gen.conversation_id != client.conversation_id:
            raise MessageNotFound(
                f"No answer {message_id!r} to resume in this conversation.",
                hint="It finished too long ago: read it with GET "
                "/api/chat/conversations/{id}/messages.",
            )
        after = gen.resume_point(last_seq)
        if after is None:
            raise MessageNotFound(
                f"Cannot resume answer {message_id!r} after seq {last_seq}.",
                details={"last_seq": last_seq, "available_seq": gen.last_seq},
                hint="Send a last_seq you received, or 0 for the whole answer.",
            )
        events = gen.since(after)
        sent = client.cursors.get(gen.id)
        if sent is None:
            # The replay covers this answer's held live events; other answers' go out first.
            client.pending = [p for p in client.pending if p[0] != gen.id]
        self.attach(client)
        if sent is not None:
            # Live events already went out: only fill the gap before the first of them.
            first = client.first_live.get(gen.id, sent + 1)
            events = [e for e in events if e.id < first]
            if events:
                client.first_live[gen.id] = events[0].id
        elif events:
            client.mark_sent(gen.id, events[-1].id, first=events[0].id)
        frames = 0
        for event in events:
            for frame in generation_frames(_as_message(gen, event)):
                self._offer(client, dumps(frame))
                frames += 1
        if gen.running:
            self._ensure_watch(gen, after=gen.last_id)
        return frames

    def _deliver(self, client: WSClient, gen_id: str, event_id: int, texts: list[str]) -> None:
        if event_id <= client.cursors.get(gen_id, 0):
            return  # already replayed by a resume
        client.mark_sent(gen_id, event_id)
        for text in texts:
            self._offer(client, text)

    # --- fan-out of answers --------------------------------------------------------------
    def _started_here(self, gen: Generation) -> None:
        """The hub started an answer: watch it from its first event if it has clients here."""
        if gen.local and gen.conversation_id in self._conversations:
            self._ensure_watch(gen, after=0)

    async def _started_elsewhere(self, message: dict[str, Any]) -> None:
        """Another worker announced an answer: mirror it and watch it from its first event."""
        try:
            gen = await self.hub.mirror(
                str(message["gen_id"]),
                str(message["conversation_id"]),
                origin=message.get("origin"),
            )
        except StudyRAGError as exc:
            log.warning("Cannot follow answer %s: %s", message.get("gen_id"), exc.message)
            return
        if gen is not None and not gen.local:
            self._ensure_watch(gen, after=0)

    def _ensure_watch(self, gen: Generation, *, after: int) -> None:
        if gen.id in self._watches or self._closing:
            return
        task = asyncio.create_task(self._watch(gen, after), name=f"ws-watch-{gen.id}")
        self._watches[gen.id] = task
        task.add_done_callback(partial(forget_task, self._watches, gen.id))

    async def _watch(self, gen: Generation, after: int) -> None:
        """Copy one answer's events, in order, to the conversation's clients here."""
        async for event in gen.follow(after):
            clients = self.clients(gen.conversation_id)
            if not clients:
                continue
            texts = [dumps(f) for f in generation_frames(_as_message(gen, event))]
            for client in clients:
                if not client.attached:
                    client.pending.append((gen.id, event.id, texts))
                    if len(client.pending) > client.limit:
                        self.attach(client)
                else:
                    self._deliver(client, gen.id, event.id, texts)

    # --- fan-out of frames ---------------------------------------------------------------
    def _ensure_pump(self, conversation_id: str) -> asyncio.Event:
        ready = self._ready.get(conversation_id)
        if ready is None:
            ready = self._ready[conversation_id] = asyncio.Event()
            self._pumps[conversation_id] = asyncio.create_task(
                self._pump(conversation_id, ready), name=f"ws-pump-{conversation_id}"
            )
        return ready

    async def _pump(self, conversation_id: str, ready: asyncio.Event) -> None:
        """Copy the conversation's broker messages to its local clients; resubscribe on failure."""
        delay = 0.25
        while True:
            nonce = uuid.uuid4().hex
            hello: asyncio.Task[None] | None = None
            try:
                messages = cast(
                    AsyncGenerator[dict[str, Any], None],
                    self.broker.subscribe(channel(conversation_id)),
                )
                async with aclosing(messages):
                    hello = asyncio.create_task(self._hello(conversation_id, nonce, ready))
                    async for message in messages:
                        kind = message.get("kind")
                        if kind == "hello":
                            if message.get("nonce") == nonce:
                                ready.set()
                                delay = 0.25
                        elif kind == "gen":
                            await self._started_elsewhere(message)
                        else:
                            self._dispatch(conversation_id, message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - logged, told to clients, retried
                log.warning("Broker subscription for %s failed: %s", conversation_id, exc)
                error = BrokerUnavailable("Live updates were interrupted; reconnecting.")
                for client in self.clients(conversation_id):
                    self.send(client, error_frame(error))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                if hello is not None:
                    hello.cancel()

    async def _hello(self, conversation_id: str, nonce: str, ready: asyncio.Event) -> None:
        # Subscribing is asynchronous on every broker: publish to ourselves until it arrives,
        # and only then let clients send, so no answer can start before we listen.
        wait = 0.01
        while not ready.is_set():
            with suppress(StudyRAGError):
                await self.broker.publish(
                    channel(conversation_id), {"kind": "hello", "nonce": nonce}
                )
            await asyncio.sleep(wait)
            wait = min(wait * 2, 0.5)

    def _dispatch(self, conversation_id: str, message: dict[str, Any]) -> None:
        clients = self.clients(conversation_id)
        kind = message.get("kind")
        if kind == "frame":
            frame = message["frame"]
            text = dumps(frame)
            exclude = message.get("exclude")
            for client in clients:
                if client.id != exclude:
                    self._offer(client, text)
            if frame.get("type") == "conversation_deleted":
                for client in clients:
                    client.close_soon(CLOSE_NOT_FOUND, "conversation deleted", drop_pending=False)

    # --- per-client tasks ----------------------------------------------------------------
    async def _write(self, client: WSClient) -> None:
        """Drain one client's queue into its socket; ends with the socket."""
        websocket = client.websocket
        queue = client.queue
        try:
            while True:
                if not queue:
                    await client.wait_for_items()
                item = queue.popleft()
                if isinstance(item, _Close):
                    with suppress(Exception):
                        await asyncio.wait_for(
                            websocket.close(item.code, item.reason), timeout=CLOSE_TIMEOUT
                        )
                    return
                await websocket.send_text(item)
                client.last_sent = time.monotonic()
        except (WebSocketDisconnect, OSError, RuntimeError):
            client.closing = True

    async def _ping_loop(self) -> None:
        """Ping idle clients; close those whose writer has been stuck for several intervals."""
        interval = self.api.ws_ping_interval
        while True:
            await asyncio.sleep(interval / 2)
            try:
                self._ping_idle(interval)
            except Exception:  # a bug here must not end the pings of every client
                log.exception("WebSocket ping round failed")

    def _ping_idle(self, interval: float) -> None:
        now = time.monotonic()
        for group in list(self._conversations.values()):
            for client in list(group.values()):
                idle = now - client.last_sent
                if client.closing:
                    continue
                if client.queue and idle > STALL_INTERVALS * interval:
                    self._kill(client, CLOSE_OVERFLOW, "client not reading")
                elif not client.queue and idle >= interval:
                    self._offer(client, dumps({"type": "ping", "ts": time.time()}))


def _as_message(gen: Generation, event: Any) -> dict[str, Any]:
    return {"message_id": gen.message_id, "type": event.type, "data": event.data, "id": event.id}
