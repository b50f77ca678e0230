"""Answers a student can read, through HTTP with the real SmolLM2 model: no loop, no prompt
echo, and a question too long for the model's window refused before anything is stored."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import websockets

from studyrag.chat.echo import strip_echo
from studyrag.chat.loops import find_loop
from studyrag.config import APISettings, ChatSettings, LLMSettings, Settings
from tests.api.conftest import LiveServer, run_server

pytestmark = pytest.mark.slow

QUESTIONS = [
    "Why do leaves look green?",
    "What do mitochondria make?",
    "What are plant cell walls made of?",
]
# Digits tokenize one by one: well under the 8,000-character limit, far over the window.
TOO_LONG = "1234567 " * 900


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("answers"),
        llm=LLMSettings(provider="llamacpp", max_tokens=192, n_threads=2, temperature=0.0),
        chat=ChatSettings(rewrite_followups=False),
        api=APISettings(rate_limit_per_minute=0),
    )
    with run_server(settings) as live:
        yield live


def test_answers_neither_loop_nor_echo_the_prompt(server: LiveServer) -> None:
    with httpx.Client(base_url=server.base, timeout=300) as http:
        for question in QUESTIONS:
            response = http.post("/api/chat/message", json={"message": question})
            assert response.status_code == 200, response.text
            body = response.json()
            content = body["message"]["content"]
            assert content.strip(), question
            assert find_loop(content) is None, content
            assert "Question:" not in content and "Sources:" not in content, content
            labels = [f"{s['filename']}" for s in body["sources"]]
            assert strip_echo(content, labels)[1] == [], content
            stats = body["metadata"]["stats"]
            assert stats["finish_reason"] in ("stop", "length", "repetition")
            if stats["finish_reason"] == "repetition":
                assert body["metadata"]["loop"]["generated_chars"] > len(content)


def assert_refused(body: dict, *, code: str = "CHAT_003") -> None:
    assert body["error_code"] == code, body
    assert body["details"]["tokens"] > body["details"]["limit"] > 0
    assert body["details"]["context_window"] == 2048
    assert "Shorten the message" in body["details"]["hint"]


async def test_a_question_too_long_for_the_window_is_refused_on_every_transport(
    server: LiveServer,
) -> None:
    assert len(TOO_LONG.strip()) < server.settings.chat.max_message_chars
    async with httpx.AsyncClient(base_url=server.base, timeout=60) as http:
        rest = await http.post("/api/chat/message", json={"message": TOO_LONG})
        assert rest.status_code == 413, rest.text
        assert_refused(rest.json())

        created = await http.post("/api/chat/conversations", json={})
        cid = created.json()["id"]
        sse = await http.post(f"/api/chat/stream/{cid}", json={"message": TOO_LONG})
        assert sse.status_code == 413, sse.text
        assert_refused(sse.json())

        url = f"ws://127.0.0.1:{server.port}/ws/chat/{cid}"
        async with websockets.connect(url, max_size=None) as ws:
            assert json.loads(await ws.recv())["type"] == "connected"
            await ws.send(json.dumps({"type": "message", "content": TOO_LONG}))
            frame = json.loads(await ws.recv())
            while frame["type"] != "error":
                frame = json.loads(await ws.recv())
            assert_refused(frame)

        # Refused before anything was stored: the conversation has no message.
        conv = (await http.get(f"/api/chat/conversations/{cid}")).json()
        assert conv["message_count"] == 0
