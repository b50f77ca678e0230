"""The chat model's server failing under a running StudyRAG: refused, silent, stalled, cut off.

StudyRAG runs for real (uvicorn, SQLite, Chroma, MiniLM) with STUDYRAG_LLM__PROVIDER=openai
pointed at tests/backends/llm/fault_server.py, a raw-socket OpenAI-compatible server that
injects each fault. Every client transport (REST, SSE, WebSocket) gets the error in the
house shape, the answer is stored the way the engine defines a failed one (`status:
"error"` when no token was sent; once tokens reached clients, `status: "incomplete"` as a
stopped or killed answer; `metadata.error_code` and `stats.finish_reason: "error"` in both,
the text streamed so far as its content, nothing more), and the next question is answered
once the model's server behaves again.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from studyrag.config import APISettings, ChatSettings, LLMSettings, Settings
from tests.api.conftest import (
    QUESTION,
    LiveServer,
    new_conversation,
    run_server,
    sse_events,
    ws_client,
)
from tests.backends.llm.fault_server import MODEL, Behaviour, FaultyOpenAIServer

pytestmark = pytest.mark.slow

TIMEOUT = 1.0  # STUDYRAG_LLM__TIMEOUT: the read deadline of the model's server


@pytest.fixture(scope="module")
def model_server() -> Iterator[FaultyOpenAIServer]:
    with FaultyOpenAIServer() as server:
        yield server


@pytest.fixture(scope="module")
def faulty(
    model_server: FaultyOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("llm-faults"),
        llm=LLMSettings(
            provider="openai",
            openai_base_url=model_server.url,
            model=MODEL,
            timeout=TIMEOUT,
            max_tokens=64,
        ),
        chat=ChatSettings(rewrite_followups=False),
        api=APISettings(rate_limit_per_minute=0),
    )
    with run_server(settings) as live:
        yield live


@pytest.fixture
async def http(
    faulty: LiveServer, model_server: FaultyOpenAIServer
) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=faulty.base, timeout=60) as client:
        yield client
    # Whatever a test did to it, the next one starts with a model server that answers.
    if not model_server.listening:
        model_server.listen()
    model_server.normal()


async def stored_answer(http: httpx.AsyncClient, cid: str) -> dict[str, Any]:
    items = (await http.get(f"/api/chat/conversations/{cid}/messages")).json()["items"]
    assert [m["role"] for m in items][-2:] == ["user", "assistant"], items
    return dict(items[-1])


def assert_failed_answer(answer: dict[str, Any], code: str, seen: str) -> None:
    """Stored as failed, with exactly the text the clients were shown: `error` when they saw
    nothing, `incomplete` (cut off, like a stopped answer) when they saw some."""
    assert answer["status"] == ("incomplete" if seen else "error"), answer
    assert answer["metadata"]["error_code"] == code, answer["metadata"]
    if seen:
        assert answer["metadata"]["stats"]["finish_reason"] == "error", answer["metadata"]
    assert answer["content"] == seen, (answer["content"], seen)


async def sse_ask(http: httpx.AsyncClient, cid: str) -> list[tuple[str, dict[str, Any]]]:
    """POST /api/chat/stream: every event of the answer, as (name, data)."""
    async with http.stream("POST", f"/api/chat/stream/{cid}", json={"message": QUESTION}) as r:
        assert r.status_code == 200, await r.aread()
        return [(e.event, e.data) async for e in sse_events(r)]


async def ws_answer(live: LiveServer, cid: str) -> list[dict[str, Any]]:
    """Ask over /ws/chat; the frames up to stream_end or the answer's error."""
    async with ws_client(live, cid) as ws:
        await ws.send({"type": "message", "content": QUESTION})
        return await ws.stream(within=60)


async def ask(http: httpx.AsyncClient, cid: str) -> httpx.Response:
    return await http.post("/api/chat/message", json={"message": QUESTION, "conversation_id": cid})


async def answer_recovers(http: httpx.AsyncClient, cid: str) -> None:
    """The same conversation gets a whole answer once the model's server behaves."""
    r = await ask(http, cid)
    assert r.status_code == 200, r.text
    assert r.json()["message"]["status"] == "complete"
    assert r.json()["message"]["content"].startswith("Chlorophyll absorbs")


async def test_unreachable_model_server_is_chat_001_on_every_transport(
    faulty: LiveServer, http: httpx.AsyncClient, model_server: FaultyOpenAIServer
) -> None:
    model_server.refuse()
    # REST
    cid = await new_conversation(http)
    r = await ask(http, cid)
    assert r.status_code == 503, r.text
    body = r.json()
    assert set(body) == {"error_code", "message", "details", "request_id"}
    assert body["error_code"] == "CHAT_001"
    assert model_server.url in body["message"] and "STUDYRAG_LLM__" in body["message"]
    assert body["request_id"] == r.headers["x-request-id"]
    assert_failed_answer(await stored_answer(http, cid), "CHAT_001", "")
    # SSE
    cid = await new_conversation(http)
    events = await sse_ask(http, cid)
    names = [name for name, _ in events]
    assert names[0] == "start" and names[-1] == "error" and "token" not in names, names
    error = events[-1][1]
    assert error["error_code"] == "CHAT_001" and error["message_id"] == events[0][1]["message_id"]
    assert_failed_answer(await stored_answer(http, cid), "CHAT_001", "")
    # WebSocket
    cid = await new_conversation(http)
    frames = await ws_answer(faulty, cid)
    assert frames[-1]["type"] == "error", frames
    assert frames[-1]["error_code"] == "CHAT_001" and frames[-1]["message_id"]
    assert not [f for f in frames if f["type"] == "stream_chunk"]
    assert_failed_answer(await stored_answer(http, cid), "CHAT_001", "")

    model_server.listen()
    await answer_recovers(http, cid)


async def test_a_model_server_that_never_answers_times_out_with_a_hint(
    http: httpx.AsyncClient, model_server: FaultyOpenAIServer
) -> None:
    model_server.behaviour = Behaviour(delay_headers=20 * TIMEOUT)
    cid = await new_conversation(http)
    t = time.monotonic()
    r = await ask(http, cid)
    spent = time.monotonic() - t
    assert r.status_code == 502, r.text
    body = r.json()
    assert body["error_code"] == "CHAT_004"
    # The message names what the user waited: each attempt's deadline and how many attempts.
    assert f"did not answer within {TIMEOUT:g} s, asked 2 times" in body["message"]
    assert spent >= 2 * TIMEOUT, spent
    assert "STUDYRAG_LLM__TIMEOUT" in body["message"]
    # The deadline holds: one retry at most, far less than the server's silence.
    assert spent < 10 * TIMEOUT, spent
    assert_failed_answer(await stored_answer(http, cid), "CHAT_004", "")
    model_server.normal()
    await answer_recovers(http, cid)


async def test_a_stream_that_stalls_keeps_what_was_shown_and_says_so(
    http: httpx.AsyncClient, model_server: FaultyOpenAIServer
) -> None:
    model_server.behaviour = Behaviour(stall_after=4, stall=20 * TIMEOUT)
    cid = await new_conversation(http)
    events = await sse_ask(http, cid)
    names = [name for name, _ in events]
    assert names[-1] == "error" and "done" not in names, names
    seen = "".join(data["delta"] for name, data in events if name == "token")
    assert seen == "Chlorophyll absorbs blue and", seen
    error = events[-1][1]
    assert error["error_code"] == "CHAT_004" and "STUDYRAG_LLM__TIMEOUT" in error["message"]
    assert_failed_answer(await stored_answer(http, cid), "CHAT_004", seen)
    model_server.normal()
    await answer_recovers(http, cid)


async def test_a_stream_cut_off_mid_answer_keeps_what_clients_saw(
    faulty: LiveServer, http: httpx.AsyncClient, model_server: FaultyOpenAIServer
) -> None:
    model_server.behaviour = Behaviour(drop_after=5)
    dropped = model_server.dropped
    # SSE
    cid = await new_conversation(http)
    events = await sse_ask(http, cid)
    seen = "".join(data["delta"] for name, data in events if name == "token")
    assert seen == "Chlorophyll absorbs blue and red", seen
    assert events[-1][0] == "error", events
    error = events[-1][1]
    assert error["error_code"] == "CHAT_004" and "dropped" in error["message"]
    assert_failed_answer(await stored_answer(http, cid), "CHAT_004", seen)
    # WebSocket: the same answer, the same stored result.
    cid = await new_conversation(http)
    frames = await ws_answer(faulty, cid)
    shown = "".join(f["delta"] for f in frames if f["type"] == "stream_chunk")
    assert shown == seen
    assert frames[-1]["type"] == "error" and frames[-1]["error_code"] == "CHAT_004"
    assert_failed_answer(await stored_answer(http, cid), "CHAT_004", shown)
    # Once per answer: the openai client never retries a stream that had started.
    assert model_server.dropped == dropped + 2
    model_server.normal()
    await answer_recovers(http, cid)
