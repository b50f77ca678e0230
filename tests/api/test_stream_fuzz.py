"""Hypothesis fuzz of the streaming endpoints (issue 12) over a real server and the real
SmolLM2 model (answers capped at a few tokens): POST and GET /api/chat/stream/{id} with
generated bodies, query strings and Last-Event-ID headers, and /ws/chat/{id} with generated
frames. Never a 5xx; a refusal is the house error shape (HTTP) or an error frame (SSE,
WebSocket); a WebSocket stays open after any frame (it answers the next ping); an accepted
question ends with `done` / `stream_end` or an error event."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tests.api.conftest import LiveServer, run_server, server_settings

pytestmark = pytest.mark.slow

HOUSE = {"error_code", "message", "details", "request_id"}
WS_ERROR = HOUSE | {"type"}
SSE_EVENTS = {"generation", "start", "sources", "token", "done", "error"}

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
QUESTIONS = st.sampled_from(["Why are leaves green?", "What makes ATP?", " ", "", "x" * 9000])
# The fields a question takes, each with a plausible value...
PLAUSIBLE = {
    "template": st.sampled_from(["RAG_DEFAULT", "RAG_DETAILED", "nope"]),
    "top_k": st.integers(-3, 60),
    "search_mode": st.sampled_from(["hybrid", "lexical", "semantic", "x"]),
    "max_tokens": st.integers(-1, 6),
    "filters": st.fixed_dictionaries(
        {}, optional={"file_types": st.lists(st.sampled_from(["md", "pdf", "exe"]), max_size=2)}
    ),
}
# ...or any JSON at all.
ANY = {k: st.one_of(v, JSON) for k, v in PLAUSIBLE.items()}
# Values a question is answered with: answers run too, not only refusals.
VALID = {
    "template": st.sampled_from(["RAG_DEFAULT", "RAG_DETAILED"]),
    "top_k": st.integers(1, 8),
    "search_mode": st.sampled_from(["hybrid", "lexical", "semantic"]),
    "max_tokens": st.integers(1, 6),
    "filters": st.fixed_dictionaries({}, optional={"file_types": st.just(["md"])}),
}


def bodies(text_field: str) -> st.SearchStrategy[Any]:
    """A question's body: valid fields; plausible ones (some missing, some out of range);
    fields of any type, unknown ones too; or any JSON value at all."""
    valid = st.fixed_dictionaries(
        {text_field: st.sampled_from(["Why are leaves green?", "What makes ATP?"])},
        optional=VALID,
    )
    plausible = st.fixed_dictionaries({text_field: QUESTIONS}, optional=PLAUSIBLE)
    anything = st.fixed_dictionaries(
        {}, optional=ANY | {text_field: st.one_of(QUESTIONS, JSON), "surprise": JSON}
    )
    return st.one_of(valid, plausible, anything, JSON)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = server_settings(tmp_path_factory.mktemp("stream-fuzz"))
    settings.llm.max_tokens = 6
    with run_server(settings) as live:
        yield live


def conversation(http: httpx.Client) -> str:
    made = http.post("/api/chat/conversations", json={})
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


def sse(lines: Iterator[str]) -> list[tuple[str, Any]]:
    """(event, data) of a text/event-stream body."""
    events: list[tuple[str, Any]] = []
    name, data = "message", []
    for line in lines:
        if line == "":
            if data:
                events.append((name, json.loads("\n".join(data))))
            name, data = "message", []
        elif line.startswith("event:"):
            name = line.partition(":")[2].strip()
        elif line.startswith("data:"):
            data.append(line.partition(":")[2].removeprefix(" "))
    return events


def assert_house(response: httpx.Response) -> str:
    assert response.status_code < 500, response.text
    body = response.json()
    assert set(body) == HOUSE and body["message"], body
    return str(body["error_code"])


def assert_stream(events: list[tuple[str, Any]]) -> str:
    """A whole answer's events: known ones, ending with done or a house-shaped error."""
    names = [name for name, _ in events]
    assert set(names) <= SSE_EVENTS, names
    if not events:
        return "nothing"
    last, data = events[-1]
    assert last in ("done", "error"), names
    if last == "error":
        assert HOUSE - {"request_id"} <= set(data) and data["message"], data
        return str(data["error_code"])
    return "done"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies("message"))
@example(body={"message": "Why are leaves green?", "max_tokens": 3})
def test_posting_any_body_to_the_stream_is_answered_or_refused_cleanly(
    server: LiveServer, body: Any
) -> None:
    with httpx.Client(base_url=server.base, timeout=httpx.Timeout(30, read=300)) as http:
        cid = conversation(http)
        # json.dumps writes NaN and Infinity, which JSON does not have: refused as JSON.
        content = json.dumps(body)
        with http.stream(
            "POST",
            f"/api/chat/stream/{cid}",
            content=content.encode(),
            headers={"Content-Type": "application/json"},
        ) as reply:
            if reply.status_code != 200:
                reply.read()
                event(f"{reply.status_code} {assert_house(reply)}")
                return
            event(f"stream {assert_stream(sse(reply.iter_lines()))}")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    query=st.dictionaries(
        st.sampled_from(["message", "last_event_id", "x", "offset"]), st.text(max_size=120)
    ),
    header=st.one_of(
        st.none(),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80),
        st.from_regex(r"[0-9a-f]{32}:[0-9]{1,25}", fullmatch=True),
    ),
    answered=st.booleans(),
)
def test_attaching_with_any_query_or_last_event_id_never_fails(
    server: LiveServer, query: dict[str, str], header: str | None, answered: bool
) -> None:
    with httpx.Client(base_url=server.base, timeout=httpx.Timeout(30, read=300)) as http:
        cid = conversation(http)
        if answered:
            asked = http.post(
                "/api/chat/message",
                json={"message": "Why are leaves green?", "conversation_id": cid, "max_tokens": 3},
            )
            assert asked.status_code == 200, asked.text
        headers = {"Last-Event-ID": header} if header is not None else {}
        with http.stream("GET", f"/api/chat/stream/{cid}", params=query, headers=headers) as reply:
            if reply.status_code != 200:
                reply.read()
                event(f"{reply.status_code} {assert_house(reply)}")
                return
            event(f"attached {assert_stream(sse(reply.iter_lines()))}")


FRAME_TYPES = st.sampled_from(
    ["message", "ping", "pong", "typing", "stop", "resume", "Message", "", "subscribe"]
)


def frames() -> st.SearchStrategy[str | bytes]:
    """A client frame: a plausible question, a known or unknown type with any fields, any
    JSON, garbage text, bytes."""
    question = bodies("content").map(
        lambda body: {"type": "message", **body} if isinstance(body, dict) else body
    )
    typed = st.builds(
        lambda kind, fields: {"type": kind, **fields},
        FRAME_TYPES,
        st.fixed_dictionaries(
            {},
            optional=ANY
            | {
                "content": st.one_of(QUESTIONS, JSON),
                "is_typing": JSON,
                "message_id": JSON,
                "last_seq": st.one_of(st.integers(-(2**70), 2**70), JSON),
            },
        ),
    )
    as_text = st.one_of(question, typed, JSON).map(json.dumps)
    return st.one_of(as_text, as_text, st.text(max_size=60), st.binary(max_size=60))


def _asks(frame: str | bytes) -> bool:
    """Whether `frame` is a question: it is then answered, or refused with an error frame."""
    try:
        value = json.loads(frame)
    except ValueError:
        return False
    return isinstance(value, dict) and value.get("type") == "message"


async def _exchange(server: LiveServer, cid: str, frame: str | bytes) -> list[dict[str, Any]]:
    """Send `frame`, then a ping; every frame received until the pong and, for a question,
    until its answer's end or its refusal."""
    received: list[dict[str, Any]] = []
    async with websockets.connect(server.ws_url(cid), max_size=None) as ws:
        hello = json.loads(await ws.recv())
        assert hello["type"] == "connected", hello
        await ws.send(frame)
        await ws.send(json.dumps({"type": "ping"}))
        pending, ponged = _asks(frame), False
        while not ponged or pending:
            reply = json.loads(await asyncio.wait_for(ws.recv(), 300))
            received.append(reply)
            if reply["type"] == "pong":
                ponged = True
            elif reply["type"] in ("stream_end", "error"):
                pending = False
    return received


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=frames())
@example(frame=json.dumps({"type": "message", "content": "What makes ATP?", "max_tokens": 3}))
def test_any_websocket_frame_gets_an_answer_or_an_error_frame_and_the_socket_stays(
    server: LiveServer, frame: str | bytes
) -> None:
    with httpx.Client(base_url=server.base, timeout=60) as http:
        cid = conversation(http)
    received = asyncio.run(_exchange(server, cid, frame))
    kinds = [f["type"] for f in received]
    assert "pong" in kinds, kinds  # the socket still answers after the frame
    for f in received:
        if f["type"] == "error":
            assert WS_ERROR <= set(f) and f["message"], f
            event(f"error {f['error_code']}")
    if "stream_start" in kinds:
        event("answered")
        assert "stream_end" in kinds or kinds[-1] == "error", kinds
