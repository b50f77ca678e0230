"""The vector store (a real `chroma run` server) stopping under a running StudyRAG.

Search that needs vectors and answers refuse with SEARCH_003 / an error answer, lexical
search keeps working, and everything is back once Chroma is (on the same port, same data).
The chat model is the OpenAI-compatible server of tests/backends/llm/fault_server.py
answering normally, so no model has to load.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from studyrag.config import APISettings, ChatSettings, LLMSettings, Settings, VectorSettings
from tests.api.conftest import QUESTION, run_server
from tests.backends.llm.fault_server import MODEL, FaultyOpenAIServer
from tests.contracts.test_vector_store import running_chroma

pytestmark = pytest.mark.slow


def test_search_and_chat_refuse_cleanly_while_the_vector_store_is_down(tmp_path: Path) -> None:
    chroma_dir = tmp_path / "chroma"
    with FaultyOpenAIServer() as model_server, running_chroma(chroma_dir) as (url, chroma):
        settings = Settings(
            data_dir=tmp_path / "data",
            vectors=VectorSettings(url=url),
            llm=LLMSettings(provider="openai", openai_base_url=model_server.url, model=MODEL),
            chat=ChatSettings(rewrite_followups=False),
            api=APISettings(rate_limit_per_minute=0),
        )
        with run_server(settings) as live, httpx.Client(base_url=live.base, timeout=60) as http:
            query = {"query": "chlorophyll absorbs light", "mode": "hybrid"}
            assert http.post("/api/search", json=query).status_code == 200
            chroma.kill()
            chroma.wait(10)

            down = http.post("/api/search", json=query)
            assert down.status_code == 503, down.text
            assert down.json()["error_code"] == "SEARCH_003"
            assert "lexical search works meanwhile" in down.json()["details"]["hint"]
            lexical = http.post("/api/search", json=query | {"mode": "lexical"})
            assert lexical.status_code == 200, lexical.text
            assert lexical.json()["results"][0]["filename"] == "plants.md"

            asked = http.post("/api/chat/message", json={"message": QUESTION})
            assert asked.status_code == 503, asked.text
            body = asked.json()
            assert body["error_code"] == "SEARCH_003" and "Chroma server" in body["details"]["hint"]
            assert model_server.chat_requests == 0, "no answer without its sources"
            convs = http.get("/api/chat/conversations").json()["items"]
            messages = http.get(f"/api/chat/conversations/{convs[0]['id']}/messages").json()
            answer = messages["items"][-1]
            assert (answer["role"], answer["status"], answer["content"]) == (
                "assistant",
                "error",
                "",
            )
            assert answer["metadata"]["error_code"] == "SEARCH_003"
            assert http.get("/health").status_code == 503

            port = int(url.rsplit(":", 1)[1])
            with running_chroma(chroma_dir, port=port):
                back = http.post("/api/search", json=query)
                assert back.status_code == 200, back.text
                assert back.json()["results"][0]["filename"] == "plants.md"
                again = http.post("/api/chat/message", json={"message": QUESTION})
                assert again.status_code == 200, again.text
                assert again.json()["message"]["status"] == "complete"
