"""Two app instances sharing Redis and one database: any worker serves any WebSocket client."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from studyrag.config import BrokerSettings, DatabaseSettings
from tests.api.conftest import (
    QUESTION,
    LiveServer,
    chunks,
    new_conversation,
    run_server,
    server_settings,
    ws_client,
)

pytestmark = pytest.mark.slow

REDIS_URL = "redis://127.0.0.1:6379/0"
LONG_QUESTION = "Explain in detail how photosynthesis works and what chlorophyll absorbs."


def redis_reachable() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except (redis.exceptions.RedisError, OSError):
        return False


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, LiveServer]]:
    if not redis_reachable():
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: start redis-server")
    # This run's keys and channels only: other runs may share the same Redis.
    broker = BrokerSettings(url=REDIS_URL, namespace=f"fanout-{uuid.uuid4().hex[:10]}")
    first_dir, second_dir = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    first = server_settings(first_dir).model_copy(update={"broker": broker})
    # The second worker reads the same database; only the first holds the vectors it needs.
    second = server_settings(second_dir).model_copy(
        update={
            "broker": broker,
            "database": DatabaseSettings(url=f"sqlite+aiosqlite:///{first_dir / 'studyrag.db'}"),
        }
    )
    with run_server(first) as one, run_server(second, ingest=False) as two:
        yield one, two


@pytest.fixture
async def clients(
    pair: tuple[LiveServer, LiveServer],
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    one, two = pair
    async with (
        httpx.AsyncClient(base_url=one.base, timeout=120) as a,
        httpx.AsyncClient(base_url=two.base, timeout=120) as b,
    ):
        yield a, b


async def test_stream_started_on_one_worker_reaches_a_client_on_the_other(
    pair: tuple[LiveServer, LiveServer], clients: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    one, two = pair
    http_one, http_two = clients
    cid = await new_conversation(http_one)
    async with ws_client(one, cid) as here, ws_client(two, cid) as there:
        answer = await http_one.post(
            "/api/chat/message", json={"message": QUESTION, "conversation_id": cid, "max_tokens": 8}
        )
        assert answer.status_code == 200, answer.text
        local, remote = await here.stream(), await there.stream()
        assert (await there.until("conversation_updated"))["conversation"]["message_count"] == 2
    assert chunks(remote) == chunks(local) and chunks(remote)
    assert [f["type"] for f in remote] == [f["type"] for f in local]
    assert remote[-1]["message"]["id"] == answer.json()["message"]["id"]

    # REST changes on the second worker reach clients of the first.
    async with ws_client(one, cid) as here:
        renamed = await http_two.put(f"/api/chat/conversations/{cid}", json={"title": "Moved"})
        assert renamed.status_code == 200
        assert (await here.until("conversation_updated"))["conversation"]["title"] == "Moved"


async def test_busy_and_stop_work_across_workers(
    pair: tuple[LiveServer, LiveServer], clients: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    one, two = pair
    http_one, http_two = clients
    cid = await new_conversation(http_one)
    async with ws_client(one, cid) as here, ws_client(two, cid) as there:
        await here.send({"type": "message", "content": LONG_QUESTION, "max_tokens": 160})
        await there.until("stream_chunk")
        busy = await http_two.post(
            "/api/chat/message", json={"message": QUESTION, "conversation_id": cid}
        )
        assert busy.status_code == 409 and busy.json()["error_code"] == "CHAT_007"
        stopped = await http_two.post(f"/api/chat/conversations/{cid}/stop")
        assert stopped.json()["stopped"] is True
        end_here, end_there = (await here.stream())[-1], (await there.stream())[-1]
    assert end_here["message"]["status"] == end_there["message"]["status"] == "incomplete"
    assert end_there["metadata"]["stopped"] is True
    stored = (await http_two.get(f"/api/chat/conversations/{cid}/messages")).json()["items"]
    assert stored[-1]["status"] == "incomplete"
