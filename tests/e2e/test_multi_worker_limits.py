"""Limits are global: two real `studyrag serve` workers sharing Redis, PostgreSQL and a Chroma
server refuse at the same count as one worker would.

Messages per minute, files per day and WebSocket clients per conversation and per address are
counted across A and B; a worker killed while it holds clients stops counting them once their
slots expire (api/ws/manager.py SLOT_TTL). Real models throughout (MiniLM, SmolLM2).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from studyrag.api.ws.manager import SLOT_TTL
from tests.api.conftest import NOTES, QUESTION
from tests.contracts.test_limits import _forget
from tests.contracts.test_vector_store import running_chroma

# The two-worker topology of tests/e2e/test_multi_worker.py, started the same way.
from tests.e2e.test_multi_worker import (
    REDIS_URL,
    Worker,
    _conversation,
    _pg_database,
    _redis_reachable,
    _start,
    _stop,
    _wait_healthy,
    _ws,
)

pytestmark = pytest.mark.slow

RATE = 3
PER_CONVERSATION = 2
PER_ADDRESS = 3
PER_DAY = 2


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Worker, Worker]]:
    if not _redis_reachable():
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: start redis-server")
    root = tmp_path_factory.mktemp("limit-workers")
    with _pg_database() as pg_url, running_chroma(root / "chroma") as (chroma_url, _):
        namespace = f"limits-{uuid.uuid4().hex[:10]}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYRAG_")}
        env |= {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "ANONYMIZED_TELEMETRY": "False",
            "STUDYRAG_DATABASE__URL": pg_url,
            "STUDYRAG_VECTORS__URL": chroma_url,
            "STUDYRAG_BROKER__URL": REDIS_URL,
            # This run's counts only: other runs share the same Redis.
            "STUDYRAG_BROKER__NAMESPACE": namespace,
            "STUDYRAG_LLM__PROVIDER": "llamacpp",
            "STUDYRAG_LLM__MAX_TOKENS": "16",
            "STUDYRAG_LLM__N_THREADS": "1",
            "STUDYRAG_CHAT__REWRITE_FOLLOWUPS": "false",
            "STUDYRAG_CHAT__ATTRIBUTION": "false",
            "STUDYRAG_API__RATE_LIMIT_PER_MINUTE": str(RATE),
            "STUDYRAG_API__WS_MAX_CLIENTS_PER_CONVERSATION": str(PER_CONVERSATION),
            "STUDYRAG_API__WS_MAX_CLIENTS_PER_ADDRESS": str(PER_ADDRESS),
            # Local mode has no quota unless one is set.
            "STUDYRAG_API__UPLOADS_PER_DAY": str(PER_DAY),
        }
        a = _start("A", root / "a", env, root / "a.log")
        _wait_healthy(a)  # A migrates the shared database first
        b = _start("B", root / "b", env, root / "b.log")
        try:
            _wait_healthy(b)
            yield a, b
        finally:
            _stop(b)
            _stop(a)
            asyncio.run(_forget(namespace))


async def _refused(worker: Worker, conversation_id: str) -> str:
    """Connect and expect RATE_002 then close 1013; the error's message."""
    async with websockets.connect(worker.ws_url(conversation_id)) as extra:
        error = json.loads(await asyncio.wait_for(extra.recv(), 30))
        assert error["type"] == "error" and error["error_code"] == "RATE_002", error
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(extra.recv(), 30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        return str(error["message"])


async def test_messages_per_minute_are_counted_across_workers(
    workers: tuple[Worker, Worker],
) -> None:
    a, b = workers
    async with (
        httpx.AsyncClient(base_url=a.base, timeout=180) as on_a,
        httpx.AsyncClient(base_url=b.base, timeout=180) as on_b,
    ):
        cid = await _conversation(on_a)
        body = {"message": QUESTION, "conversation_id": cid, "max_tokens": 2}
        # RATE messages in all, spread over both workers: each has seen fewer than RATE.
        for http in (on_a, on_b, on_a)[:RATE]:
            answered = await http.post("/api/chat/message", json=body)
            assert answered.status_code == 200, answered.text
        for http in (on_b, on_a):
            refused = await http.post("/api/chat/message", json=body)
            assert refused.status_code == 429, refused.text
            assert refused.json()["error_code"] == "RATE_001"
            assert refused.json()["details"]["limit"] == RATE
            assert 1 <= int(refused.headers["retry-after"]) <= 60
        # A WebSocket message on either worker draws on the same budget.
        async with _ws(b, cid) as socket:
            await socket.send({"type": "message", "content": QUESTION, "max_tokens": 2})
            error = await socket.until("error", within=30)
            assert error["error_code"] == "RATE_001" and 0 < error["retry_after"] <= 60
        stored = (await on_b.get(f"/api/chat/conversations/{cid}")).json()
        assert stored["message_count"] == 2 * RATE, "no refused question was stored"


async def test_websocket_clients_are_counted_across_workers(
    workers: tuple[Worker, Worker],
) -> None:
    a, b = workers
    async with httpx.AsyncClient(base_url=a.base, timeout=60) as http:
        one, two, three = [await _conversation(http) for _ in range(3)]
    async with _ws(a, one) as first, _ws(b, one) as second:
        # `clients` counts the conversation's clients on every worker.
        assert first.frames[0]["clients"] == 1 and second.frames[0]["clients"] == 2
        for worker in (a, b):
            assert "conversation" in await _refused(worker, one)
        async with _ws(a, two):
            # Three sockets from 127.0.0.1 in all (two on A, one on B): the address is full
            # on both workers, though neither holds three.
            for worker in (a, b):
                assert "address" in await _refused(worker, three)
        # A client that leaves A makes room on B at once (its slot is freed, not expired).
        await first.connection.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                async with _ws(b, one) as back:
                    assert back.frames[0]["clients"] == 2
                break
            except AssertionError:
                assert time.monotonic() < deadline, "the slot of a client gone was not freed"
                await asyncio.sleep(0.2)


def test_files_per_day_are_counted_across_workers(workers: tuple[Worker, Worker]) -> None:
    a, b = workers
    with (
        httpx.Client(base_url=a.base, timeout=180) as on_a,
        httpx.Client(base_url=b.base, timeout=180) as on_b,
    ):

        def upload(http: httpx.Client, n: int) -> httpx.Response:
            text = NOTES.replace("Plant Biology Notes", f"Plant Biology Notes {n}")
            return http.post(
                "/api/documents", files={"file": (f"plants{n}.md", text.encode(), "text/markdown")}
            )

        for n, http in enumerate((on_a, on_b)[:PER_DAY]):
            done = upload(http, n)
            assert done.status_code == 201 and done.json()["status"] == "completed", done.text
        before = on_b.get("/api/documents").json()["total"]
        for http in (on_a, on_b):
            refused = upload(http, 99)
            assert refused.status_code == 429, refused.text
            assert refused.json()["error_code"] == "RATE_004"
            assert int(refused.headers["retry-after"]) > 23 * 3600
        assert on_a.get("/api/documents").json()["total"] == before == PER_DAY


async def test_a_killed_workers_clients_stop_counting_when_their_slots_expire(
    workers: tuple[Worker, Worker],
) -> None:
    # Last: it kills A.
    a, b = workers
    async with httpx.AsyncClient(base_url=b.base, timeout=60) as http:
        cid = await _conversation(http)
    async with _ws(a, cid), _ws(a, cid):
        assert "conversation" in await _refused(b, cid)
        a.proc.send_signal(signal.SIGKILL)  # no chance to free its clients' slots
        a.proc.wait(30)
        killed_at = time.monotonic()
        assert "conversation" in await _refused(b, cid), "slots outlive their worker a while"
        while True:
            try:
                async with _ws(b, cid) as back:
                    assert back.frames[0]["clients"] == 1
                break
            except AssertionError:
                waited = time.monotonic() - killed_at
                assert waited < SLOT_TTL + 15, f"the dead worker's slots held {waited:.0f} s"
                await asyncio.sleep(1)
