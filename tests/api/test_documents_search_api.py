"""Documents, search and health over HTTP against a real server (its own data directory)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from studyrag.config import IngestSettings
from tests.api.conftest import LiveServer, run_server, server_settings
from tests.e2e.test_ingest_search import make_pdf

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = server_settings(tmp_path_factory.mktemp("docs-api"))
    settings.ingest = IngestSettings(max_file_size_mb=0.05)
    with run_server(settings, ingest=False) as server:
        yield server


@pytest.fixture
def client(docs_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=docs_server.base, timeout=120) as c:
        yield c


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error_code", "message", "details", "request_id"}
    assert body["error_code"] == code
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text and "/work/" not in response.text
    return body


def test_health_names_every_backend(client: httpx.Client) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["database"]["dialect"] == "sqlite"
    assert body["embeddings"]["provider"] == "sentence-transformers"
    assert body["vectors"]["backend"] == "chroma"
    assert body["llm"]["provider"] == "llamacpp" and body["llm"]["status"] == "ok"


def test_upload_list_show_search_delete(client: httpx.Client, tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "biology.pdf").read_bytes()
    up = client.post("/api/documents", files={"file": ("biology.pdf", pdf, "application/pdf")})
    assert up.status_code == 201, up.text
    doc = up.json()
    assert doc["status"] == "completed" and doc["chunks"] >= 3
    again = client.post("/api/documents", files={"file": ("copy.pdf", pdf, "application/pdf")})
    assert again.json()["status"] == "duplicate"
    assert again.json()["document_id"] == doc["document_id"]

    listed = client.get("/api/documents").json()
    assert doc["document_id"] in {d["id"] for d in listed["items"]}
    shown = client.get(f"/api/documents/{doc['document_id']}").json()
    assert shown["metadata"]["title"] == "Plant Biology Notes"
    assert {c["page"] for c in shown["chunks"]} == {1, 2, 3}

    found = client.post("/api/search", json={"query": "what does chlorophyll absorb", "top_k": 3})
    assert found.status_code == 200, found.text
    top = found.json()["results"][0]
    assert (top["filename"], top["page"], top["rank"]) == ("biology.pdf", 2, 1)
    assert "<mark>" in top["snippet"] and top["end"] > top["start"]
    lexical = client.post("/api/search", json={"query": "mitochondria", "mode": "lexical"})
    assert lexical.json()["results"][0]["page"] == 3

    assert client.delete(f"/api/documents/{doc['document_id']}").status_code == 200
    assert_error(client.get(f"/api/documents/{doc['document_id']}"), 404, "DOC_004")
    after = client.post("/api/search", json={"query": "chlorophyll"}).json()
    assert all(r["filename"] != "biology.pdf" for r in after["results"])


def test_bad_uploads_get_clear_errors_and_only_stored_ones_are_recorded(
    client: httpx.Client,
) -> None:
    unsupported = client.post("/api/documents", files={"file": ("slides.pptx", b"PK\x03\x04")})
    body = assert_error(unsupported, 415, "DOC_001")
    assert ".pdf" in body["details"]["hint"]
    empty = client.post("/api/documents", files={"file": ("empty.txt", b"")})
    assert_error(empty, 422, "DOC_003")
    big = client.post("/api/documents", files={"file": ("big.md", b"x " * 40_000)})
    body = assert_error(big, 413, "DOC_002")
    assert "STUDYRAG_INGEST__MAX_FILE_SIZE_MB" in body["details"]["hint"]
    failed = client.get("/api/documents", params={"status": "failed"}).json()["items"]
    assert "empty.txt" in {d["filename"] for d in failed}
    # Refused before a byte was stored: no document, no original.
    listed = client.get("/api/documents", params={"limit": 500}).json()["items"]
    assert not {"slides.pptx", "big.md"} & {d["filename"] for d in listed}


def test_search_errors(client: httpx.Client) -> None:
    assert_error(client.post("/api/search", json={"query": "  "}), 400, "SEARCH_001")
    bad_mode = client.post("/api/search", json={"query": "x", "mode": "fuzzy"})
    body = assert_error(bad_mode, 422, "SEARCH_002")
    assert body["details"]["errors"][0]["field"] == "mode"
    assert_error(client.post("/api/search", content=b"{not json"), 422, "SEARCH_002")
    assert_error(client.get("/api/nothing-here"), 404, "NOT_FOUND")
    too_many = {"query": "x", "filters": {"file_types": ["pdf"] * 21}}
    assert_error(client.post("/api/search", json=too_many), 422, "SEARCH_002")


def test_each_area_answers_invalid_requests_with_its_own_code(client: httpx.Client) -> None:
    assert_error(client.get("/api/documents", params={"limit": 0}), 422, "DOC_006")
    assert_error(client.get("/api/chat/conversations", params={"limit": 0}), 422, "CHAT_006")
    assert_error(client.post("/api/search", json={"top_k": 3}), 422, "SEARCH_002")
    assert_error(client.delete("/api/search"), 405, "METHOD_NOT_ALLOWED")


def test_oversized_chunked_body_is_refused_before_parsing(client: httpx.Client) -> None:
    def chunks():  # no Content-Length: httpx sends it chunked
        yield b'{"message": "'
        for _ in range(50):
            yield b"x" * 4096
        yield b'"}'

    refused = client.post(
        "/api/chat/message", content=chunks(), headers={"content-type": "application/json"}
    )
    body = assert_error(refused, 413, "CHAT_010")
    assert body["details"]["limit"] < 50 * 4096
    declared = client.post(
        "/api/search",
        content=b"{" + b" " * 300_000 + b"}",
        headers={"content-type": "application/json"},
    )
    assert_error(declared, 413, "REQUEST_002")
    # The server is fine afterwards.
    assert client.post("/api/search", json={"query": "anything"}).status_code == 200
