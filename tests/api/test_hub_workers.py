"""Two GenerationHubs ("workers") sharing one broker and one database, in one process.

The hubs' cross-worker rules, over MemoryBroker and RedisBroker alike: one answer per
conversation on all workers, exact replay from the other worker, stop from the other worker,
and adoption by the sweep of an answer whose worker died while nobody else watched it. The
chat engine is a stand-in above the transport (paced tokens, stored like the real one); the
e2e of the same rules with real models and processes is tests/e2e/test_multi_worker.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from studyrag.api.generations import GenerationHub
from studyrag.backends.broker.base import Broker
from studyrag.backends.broker.memory import MemoryBroker
from studyrag.chat.conversations import ConversationManager
from studyrag.db.session import Database
from studyrag.errors import GenerationInProgress
from tests.contracts.test_broker import REDIS_URL, _redis_available


class _Event:
    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def to_dict(self) -> dict[str, Any]:
        return dict(self._data)


class PacedEngine:
    """Stores the turn, yields `tokens` tokens `period` apart (stalling after `stall_after`)."""

    model = None

    def __init__(self, cm: ConversationManager, *, tokens: int = 40, period: float = 0.02):
        self.cm = cm
        self.tokens = tokens
        self.period = period
        self.stall_after: int | None = None

    async def stream_message(
        self, message: str, *, conversation_id: str | None, **_: Any
    ) -> AsyncIterator[_Event]:
        turn = await self.cm.start_turn(conversation_id, message, history_limit=0)
        conversation = turn.conversation.to_dict()
        yield _Event(
            {
                "type": "start",
                "assistant_message_id": turn.assistant.id,
                "conversation": conversation,
                "user_message": turn.user.to_dict(),
            }
        )
        text: list[str] = []
        try:
            for seq in range(1, self.tokens + 1):
                if self.stall_after is not None and seq > self.stall_after:
                    await asyncio.Event().wait()  # a worker that hangs, then dies
                await asyncio.sleep(self.period)
                text.append(f"w{seq} ")
                yield _Event({"type": "token", "seq": seq, "delta": text[-1]})
        except (asyncio.CancelledError, GeneratorExit):
            await self.cm.update_message(
                turn.assistant.id, content="".join(text), status="incomplete"
            )
            raise
        stored = await self.cm.update_message(
            turn.assistant.id, content="".join(text), status="complete"
        )
        yield _Event(
            {"type": "done", "message": stored.to_dict(), "conversation": conversation,
             "metadata": {}}
        )  # fmt: skip

    async def drain(self) -> None:
        """Nothing to wait for."""


@pytest.fixture(params=["memory", "redis"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    if request.param == "memory":
        b: Broker = MemoryBroker()  # one process: both hubs share the one in-process broker
    else:
        if not await _redis_available():
            pytest.fail(f"Redis is not reachable at {REDIS_URL}: start redis-server")
        from studyrag.backends.broker.redis import RedisBroker

        b = RedisBroker(REDIS_URL, namespace=f"hubs-{uuid.uuid4().hex[:10]}")
    async with b:
        yield b


@pytest.fixture
async def cm(tmp_path: Path) -> AsyncIterator[ConversationManager]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}")
    await db.migrate()
    yield ConversationManager(db)
    await db.aclose()


@pytest.fixture
async def hubs(
    broker: Broker, cm: ConversationManager
) -> AsyncIterator[tuple[GenerationHub, GenerationHub]]:
    made = [
        GenerationHub(chat=PacedEngine(cm), conversations=cm, broker=broker, lease_ttl=0.9)  # type: ignore[arg-type]
        for _ in range(2)
    ]
    for hub in made:
        await hub.start()
    yield made[0], made[1]
    for hub in made:
        await hub.aclose()


async def _tokens(gen: Any, at_least: int) -> None:
    async for event in gen.follow(0):
        if event.type == "token" and event.data["seq"] >= at_least:
            return


async def test_one_answer_everywhere_exact_replay_and_stop_from_the_other_worker(
    hubs: tuple[GenerationHub, GenerationHub], cm: ConversationManager
) -> None:
    a, b = hubs
    cid = (await cm.create(title="t")).id
    gen = await a.start_answer("question", conversation_id=cid, options={"template": "x"})
    await _tokens(gen, 3)
    with pytest.raises(GenerationInProgress):
        await b.start_answer("again", conversation_id=cid, options={"template": "x"})
    mirror = await b.find_current(cid)
    assert mirror is not None and not mirror.local and mirror.id == gen.id
    # Resume after event 2 on the other worker: exactly the events after it, then live.
    seen = []
    async for event in mirror.follow(2):
        seen.append((event.id, event.type, event.data))
        if event.type == "token" and event.data["seq"] >= 6:
            break
    assert [e[0] for e in seen] == list(range(3, 3 + len(seen)))
    assert seen == [(e.id, e.type, e.data) for e in gen.since(2)][: len(seen)]
    stopped = await b.stop(cid)
    await asyncio.wait_for(gen.wait(), 10)  # A ends its task just after the `done` is out
    assert stopped is mirror and mirror.state == "stopped" and gen.state == "stopped"
    assert mirror.events[-1].type == "done" and mirror.events[-1].data["metadata"]["stopped"]
    assert [e.id for e in mirror.events] == [e.id for e in gen.events]
    stored = await cm.get_message(gen.message_id or "")
    assert stored.status == "incomplete" and stored.content == gen.text()
    assert gen.last_seq < 40
    # The conversation is free again, on both workers.
    again = await b.start_answer("next", conversation_id=cid, options={"template": "x"})
    await again.wait()
    assert again.state == "complete" and (await a.find_latest(cid)).id == again.id  # type: ignore[union-attr]


async def test_an_answer_nobody_else_watched_is_adopted_when_its_worker_dies(
    hubs: tuple[GenerationHub, GenerationHub], cm: ConversationManager
) -> None:
    a, b = hubs
    assert isinstance(a.chat, PacedEngine)
    a.chat.stall_after = 4
    cid = (await cm.create(title="t")).id
    gen = await a.start_answer("question", conversation_id=cid, options={"template": "x"})
    await _tokens(gen, 4)
    # Worker A "dies": it stops renewing its lease (and never appends another event).
    assert a._upkeep is not None
    a._upkeep.cancel()
    assert b.by_message(gen.message_id or "") is None  # B follows nothing of it
    for _ in range(200):  # B's sweep adopts it once the lease lapses
        stored = await cm.get_message(gen.message_id or "")
        if stored.metadata.get("lost"):
            break
        await asyncio.sleep(0.05)
    assert stored.status == "incomplete" and stored.metadata["lost"] is True
    assert stored.content == "w1 w2 w3 w4 " == gen.text()
    latest = await b.find_latest(cid)
    assert latest is not None and latest.id == gen.id and latest.state == "error"
    assert latest.events[-1].data["error_code"] == "CHAT_012"
    assert latest.events[-1].id == gen.last_id + 1
    assert [e.id for e in latest.events] == list(range(1, latest.events[-1].id + 1))
    # A was only stalled: when its upkeep runs again it finds the answer adopted and stops it.
    a._upkeep = asyncio.create_task(a._upkeep_loop())
    await asyncio.wait_for(gen.wait(), 10)
    assert gen.state == "stopped"
    # The conversation can take a new answer.
    again = await b.start_answer("next", conversation_id=cid, options={"template": "x"})
    await again.wait()
    assert again.state == "complete"
