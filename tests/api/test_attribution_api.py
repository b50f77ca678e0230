"""Checked citations end to end: the real SmolLM2 answers over HTTP and SSE, and every quote
is the document's own text at the offsets it gives."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from studyrag.chat.citations import find_markers
from tests.api.conftest import QUESTION, new_conversation, sse_events

pytestmark = pytest.mark.slow

QUESTIONS = [QUESTION, "Where does cellular respiration happen and what does it make?"]


async def assert_attributed(http: httpx.AsyncClient, message: dict[str, Any]) -> int:
    """Check one stored answer's attribution against the server's own text; quotes seen."""
    content = message["content"]
    attribution = message["metadata"]["attribution"]
    sentences = attribution["sentences"]
    assert attribution["total"] == len(sentences)
    assert attribution["supported"] == sum(s["supported"] for s in sentences)
    assert attribution["fallback"] == (attribution["supported"] == 0)
    marked: set[int] = set()
    previous_end = 0
    for sentence in sentences:
        assert previous_end <= sentence["start"] < sentence["end"] <= len(content)
        previous_end = sentence["end"]
        piece = content[sentence["start"] : sentence["end"]]
        assert piece == piece.strip() and piece
        numbers = [n for m in find_markers(piece) for n in m.numbers]
        assert numbers == sentence["sources"], (piece, sentence)
        assert sentence["supported"] == bool(numbers)
        assert 0.0 <= sentence["support"] <= 1.0
        marked.update(numbers)
    cited = {s["index"] for s in message["sources"] if s["cited"]}
    in_content = {n for m in find_markers(content) for n in m.numbers}
    # Every marker in the stored answer is one the server checked.
    assert in_content == cited
    if not attribution["fallback"]:
        assert marked == cited
    quotes = 0
    for source in message["sources"]:
        quote = source["quote"]
        if not source["cited"]:
            assert quote is None and source["support"] is None
            continue
        quotes += 1
        span = {"start": quote["start"], "end": quote["end"]}
        text = await http.get(f"/api/documents/{source['document_id']}/text", params=span)
        assert text.status_code == 200, text.text
        assert text.json()["text"] == quote["text"]
        chunk = await http.get(f"/api/chunks/{source['chunk_id']}", params=span)
        assert chunk.status_code == 200, chunk.text
        body = chunk.json()
        assert body["quote"]["text"] == quote["text"]
        # The quote lies inside the cited chunk.
        assert body["start"] <= quote["start"] < quote["end"] <= body["end"]
        assert quote["text"] in body["text"]
    return quotes


async def test_rest_answers_carry_checked_quotes(http: httpx.AsyncClient) -> None:
    quotes = 0
    for question in QUESTIONS:
        response = await http.post(
            "/api/chat/message", json={"message": question, "max_tokens": 48}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["sources"] == body["message"]["sources"]
        assert body["metadata"]["attribution"] == body["message"]["metadata"]["attribution"]
        assert body["metadata"]["attribution_ms"] >= 0
        quotes += await assert_attributed(http, body["message"])
    # Whatever the model wrote, each answer quotes its sources (verified or as a fallback).
    assert quotes >= len(QUESTIONS)


async def test_sse_done_carries_the_stored_attribution(http: httpx.AsyncClient) -> None:
    cid = await new_conversation(http)
    params = {"message": QUESTIONS[1], "max_tokens": 32}
    async with http.stream("POST", f"/api/chat/stream/{cid}", json=params) as response:
        assert response.status_code == 200
        events = [e async for e in sse_events(response)]
    done = events[-1]
    assert done.event == "done"
    streamed = "".join(e.data["delta"] for e in events if e.event == "token")
    message = done.data["message"]
    attribution = done.data["metadata"]["attribution"]
    assert attribution == message["metadata"]["attribution"]
    if attribution["fallback"]:
        # The quotes come after what was streamed; nothing streamed is held back.
        assert message["content"].count("> ") >= 1
        assert len(message["content"]) > len(streamed.strip())
    await assert_attributed(http, message)
    stored = await http.get(f"/api/chat/conversations/{cid}/messages")
    assert stored.json()["items"][-1]["metadata"]["attribution"] == attribution
