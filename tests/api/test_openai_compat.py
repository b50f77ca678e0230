"""/v1 with the official `openai` client and with `curl -N`, against a real server and SmolLM2.

The server has an API key, which /v1 (and only /v1) requires.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.api.conftest import QUESTION, LiveServer, run_server, server_settings

pytestmark = pytest.mark.slow

KEY = "test-key-123"
MODEL = "studyrag/My notebook"  # the default notebook, where the server's notes are
SHORT = 16


@pytest.fixture(scope="module")
def v1_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = server_settings(tmp_path_factory.mktemp("v1"))
    settings.api.key = KEY
    with run_server(settings) as server:
        yield server


@pytest.fixture
def client(v1_server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{v1_server.base}/v1", api_key=KEY, max_retries=0) as c:
        yield c


@pytest.fixture
def http(v1_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=v1_server.base, timeout=120) as c:
        yield c


def stored_messages(http: httpx.Client, conversation_id: str) -> list[dict[str, Any]]:
    response = http.get(f"/api/chat/conversations/{conversation_id}/messages")
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def assert_openai_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """OpenAI's error shape, exactly: {"error": {message, type, param, code}}."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["message"]
    assert response.headers["x-request-id"]
    return dict(error)


def test_models_are_the_notebooks(client: openai.OpenAI, http: httpx.Client) -> None:
    created = http.post("/api/notebooks", json={"name": "Organic Chemistry"})
    assert created.status_code == 201, created.text
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert MODEL in ids and "studyrag/Organic Chemistry" in ids
    assert {m.object for m in models.data} == {"model"}
    assert all(m.owned_by == "studyrag" for m in models.data)
    one = client.models.retrieve("studyrag/Organic Chemistry")
    assert one.id == "studyrag/Organic Chemistry"
    assert one.model_extra and one.model_extra["notebook_id"] == created.json()["id"]


def test_completion_is_the_stored_answer_with_sources(
    client: openai.OpenAI, http: httpx.Client
) -> None:
    response = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=SHORT
    )
    assert response.object == "chat.completion"
    assert response.model == MODEL and response.id.startswith("chatcmpl-")
    choice = response.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = response.usage
    assert usage is not None and usage.completion_tokens > 0 and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    extra = response.model_extra or {}
    assert extra["sources"] and extra["sources"][0]["filename"] == "plants.md"
    assert {"index", "document_id", "chunk_id", "excerpt"} <= set(extra["sources"][0])
    assert "attribution" in extra
    # The same engine and store as /api/chat: the answer is a stored message.
    stored = stored_messages(http, extra["conversation_id"])
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[0]["content"] == QUESTION
    assert stored[1]["id"] == extra["message_id"] == response.id.removeprefix("chatcmpl-")
    assert stored[1]["content"] == choice.message.content
    assert stored[1]["metadata"]["stats"]["completion_tokens"] == usage.completion_tokens


def test_stream_chunks_done_and_usage(client: openai.OpenAI, http: httpx.Client) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=SHORT,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    last = with_choices[-1]
    assert last.choices[0].finish_reason in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text
    extra = last.model_extra or {}
    assert extra["sources"] and extra["sources"][0]["filename"] == "plants.md"
    # The usage chunk comes last, with no choices, as OpenAI sends it.
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    pieces = sum(1 for c in with_choices if c.choices[0].delta.content)
    assert chunks[-1].usage.completion_tokens == pieces
    stored = stored_messages(http, extra["conversation_id"])
    assert stored[-1]["content"] == extra["final_content"]
    assert stored[-1]["status"] == "complete"


def test_history_is_stored_and_conversation_id_continues(
    client: openai.OpenAI, http: httpx.Client
) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What are plant cell walls made of?"},
        {"role": "assistant", "content": "Cellulose [1]."},
        {"role": "user", "content": [{"type": "text", "text": "And what do mitochondria make?"}]},
    ]
    first = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8)
    cid = (first.model_extra or {})["conversation_id"]
    stored = stored_messages(http, cid)
    # The system message is left out: the notebook's template is the system prompt.
    assert [(m["role"], m["content"]) for m in stored[:3]] == [
        ("user", "What are plant cell walls made of?"),
        ("assistant", "Cellulose [1]."),
        ("user", "And what do mitochondria make?"),
    ]
    assert len(stored) == 4
    conversation = http.get(f"/api/chat/conversations/{cid}").json()
    assert conversation["metadata"]["source"] == "openai-api"
    again = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Where does photosynthesis happen?"}],
        max_tokens=8,
        extra_body={"conversation_id": cid},
    )
    assert (again.model_extra or {})["conversation_id"] == cid
    assert len(stored_messages(http, cid)) == 6


def test_unknown_model_is_an_openai_not_found(client: openai.OpenAI, http: httpx.Client) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 404
    assert caught.value.code == "NB_001" and caught.value.param == "model"
    response = http.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={
            "model": "studyrag/No Such Notebook",
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    error = assert_openai_error(response, 404, "NB_001")
    assert error["type"] == "invalid_request_error" and error["param"] == "model"
    assert "GET /v1/models" in error["message"]


def test_bad_requests_get_the_openai_error_shape(http: httpx.Client) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    empty = http.post("/v1/chat/completions", headers=auth, json={"model": MODEL, "messages": []})
    assert assert_openai_error(empty, 422, "CHAT_006")["param"] == "messages"
    last_is_assistant = http.post(
        "/v1/chat/completions",
        headers=auth,
        json={"model": MODEL, "messages": [{"role": "assistant", "content": "hello"}]},
    )
    error = assert_openai_error(last_is_assistant, 422, "CHAT_006")
    assert error["param"] == "messages" and "user" in error["message"]
    image = http.post(
        "/v1/chat/completions",
        headers=auth,
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
        },
    )
    assert assert_openai_error(image, 422, "CHAT_006")["param"] == "messages.0.content"
    two = http.post(
        "/v1/chat/completions",
        headers=auth,
        json={"model": MODEL, "n": 2, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert assert_openai_error(two, 422, "CHAT_006")["param"] == "n"
    # Refused before parsing (the body limit, pure ASGI) still in OpenAI's shape.
    huge = http.post(
        "/v1/chat/completions",
        headers=auth,
        json={"model": MODEL, "messages": [{"role": "user", "content": "x" * 100_000}]},
    )
    assert_openai_error(huge, 413, "CHAT_010")
    # The rest of the API keeps the house shape.
    house = http.post("/api/chat/message", json={"message": ""})
    assert set(house.json()) == {"error_code", "message", "details", "request_id"}


def test_api_key_is_required_on_v1_only(v1_server: LiveServer, http: httpx.Client) -> None:
    missing = http.get("/v1/models")
    error = assert_openai_error(missing, 401, "AUTH_001")
    assert error["type"] == "authentication_error"
    assert missing.headers["www-authenticate"] == "Bearer"
    with openai.OpenAI(base_url=f"{v1_server.base}/v1", api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as caught:
            bad.models.list()
    assert caught.value.code == "AUTH_001"
    assert http.get("/api/notebooks").status_code == 200


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_streams_server_sent_events(v1_server: LiveServer) -> None:
    body = {
        "model": MODEL,
        "stream": True,
        "max_tokens": 8,
        "messages": [{"role": "user", "content": QUESTION}],
    }
    proc = subprocess.run(
        [
            "curl",
            "-sSN",
            "--fail-with-body",
            "-H",
            f"Authorization: Bearer {KEY}",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(body),
            f"{v1_server.base}/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    events = [line for line in proc.stdout.split("\n\n") if line.strip()]
    assert all(e.startswith("data: ") for e in events), events
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["sources"]
