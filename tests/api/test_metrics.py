"""GET /metrics against a real server: exact counts for a known sequence of requests, the
chat statistics read from the same registry, /health and its 503."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from studyrag.config import VectorSettings
from tests.api.conftest import QUESTION, LiveServer, run_server, server_settings
from tests.contracts.test_vector_store import running_chroma

pytestmark = pytest.mark.slow

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(http: httpx.Client) -> Samples:
    """Every sample of /metrics, parsed by prometheus_client's own text parser."""
    response = http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def labelled(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with run_server(server_settings(tmp_path_factory.mktemp("metrics"))) as live:
        yield live


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=120) as c:
        yield c


HTTP = "studyrag_http_request_duration_seconds_count"


def test_a_known_sequence_of_requests_is_counted_exactly(http: httpx.Client) -> None:
    before = scrape(http)
    # The server ingested one document at start: every step of it was timed once.
    for step in ("extract", "chunk", "embed", "store"):
        assert value(before, "studyrag_ingest_step_duration_seconds_count", step=step) == 1
    assert value(before, "studyrag_ingest_documents_total", status="completed") == 1
    assert value(before, "process_resident_memory_bytes") > 0
    assert value(before, "studyrag_memory_limit_bytes") > 0

    for _ in range(2):
        assert http.get("/health").status_code == 200
    for _ in range(3):
        assert http.get("/api/notebooks").status_code == 200
    assert http.get("/api/no-such-route").status_code == 404
    for _ in range(2):
        found = http.post("/api/search", json={"query": "chlorophyll", "mode": "lexical"})
        assert found.status_code == 200, found.text
    assert http.post("/api/search", json={"query": "green leaves", "mode": "semantic"}).is_success
    bad = http.post("/api/search", json={"query": "x", "mode": "psychic"})
    assert bad.status_code == 422 and bad.json()["error_code"] == "SEARCH_002"
    missing = http.get("/api/documents/nope")
    assert missing.status_code == 404 and missing.json()["error_code"] == "DOC_004"
    after = scrape(http)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta(HTTP, method="GET", route="/health", status="200") == 2
    assert delta(HTTP, method="GET", route="/api/notebooks", status="200") == 3
    assert delta(HTTP, method="GET", route="<unmatched>", status="404") == 1
    assert delta(HTTP, method="POST", route="/api/search", status="200") == 3
    assert delta(HTTP, method="POST", route="/api/search", status="422") == 1
    assert delta(HTTP, method="GET", route="/api/documents/{document_id}", status="404") == 1
    assert delta(HTTP, method="GET", route="/metrics", status="200") == 1  # the first scrape
    assert delta("studyrag_search_duration_seconds_count", mode="lexical") == 2
    assert delta("studyrag_search_duration_seconds_count", mode="semantic") == 1
    assert delta("studyrag_search_duration_seconds_count", mode="hybrid") == 0
    assert delta("studyrag_errors_total", code="NOT_FOUND", area="none") == 1
    assert delta("studyrag_errors_total", code="SEARCH_002", area="search") == 1
    assert delta("studyrag_errors_total", code="DOC_004", area="documents") == 1
    errors_before = sum(labelled(before, "studyrag_errors_total").values())
    assert sum(labelled(after, "studyrag_errors_total").values()) - errors_before == 3
    # Every request is in exactly one series: eleven requests and one scrape.
    requests = sum(labelled(after, HTTP).values()) - sum(labelled(before, HTTP).values())
    assert requests == 12


def _p95(samples: Samples) -> float | None:
    """histogram_quantile(0.95, ...) of the answer durations, computed independently."""
    buckets = sorted(
        (float(dict(labels)["le"]), v)
        for labels, v in labelled(samples, "studyrag_answer_duration_seconds_bucket").items()
    )
    total = buckets[-1][1]
    if total == 0:
        return None
    rank, lower, below = 0.95 * total, 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


async def test_chat_stats_and_metrics_agree(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.base, timeout=120) as http:
        answer = await http.post("/api/chat/message", json={"message": QUESTION, "max_tokens": 8})
        assert answer.status_code == 200, answer.text
        cid = answer.json()["conversation"]["id"]
        unknown = await http.post(
            "/api/chat/message", json={"message": QUESTION, "conversation_id": "nope"}
        )
        assert unknown.json()["error_code"] == "CHAT_005"
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/ws/chat/{cid}") as ws:
            await ws.recv()  # connected
            stats = (await http.get("/api/chat/stats")).json()
            with httpx.Client(base_url=server.base, timeout=60) as sync:
                samples = scrape(sync)
    live = stats["generations"]
    assert live["tokens_generated"] == value(samples, "studyrag_answer_tokens_total") > 0
    answers = {
        dict(k)["outcome"]: v for k, v in labelled(samples, "studyrag_answers_total").items()
    }
    assert live["answers"] == answers and answers["complete"] >= 1
    count = value(samples, "studyrag_answer_duration_seconds_count")
    assert live["response_time"]["count"] == count
    mean = value(samples, "studyrag_answer_duration_seconds_sum") / count
    assert live["response_time"]["mean_seconds"] == round(mean, 4)
    p95 = _p95(samples)
    assert p95 is not None and live["response_time"]["p95_seconds"] == round(p95, 4)
    chat_errors = {
        dict(k)["code"]: v
        for k, v in labelled(samples, "studyrag_errors_total").items()
        if dict(k)["area"] == "chat"
    }
    assert live["errors_by_code"] == chat_errors and chat_errors["CHAT_005"] >= 1
    ws_live = value(samples, "studyrag_websocket_connections", endpoint="chat")
    assert stats["websocket"]["connections"] == ws_live == 1
    assert live["in_flight"] == value(samples, "studyrag_generations_in_flight") == 0
    dropped = value(samples, "studyrag_websocket_slow_clients_dropped_total")
    assert stats["websocket"]["slow_clients_dropped"] == dropped
    # The model's own figures, by provider.
    assert (
        value(
            samples,
            "studyrag_llm_time_to_first_token_seconds_count",
            provider="llamacpp",
            model=answer.json()["metadata"]["model"],
        )
        >= 1
    )
    tps = labelled(samples, "studyrag_llm_tokens_per_second_count")
    assert sum(tps.values()) >= 1


def test_health_reports_backends_models_and_versions(http: httpx.Client) -> None:
    response = http.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["down"] == []
    assert body["database"]["status"] == "ok" and body["database"]["dialect"] == "sqlite"
    assert body["database"]["version"].count(".") >= 1
    assert body["vectors"]["backend"] == "chroma" and body["vectors"]["vectors"] >= 1
    assert body["embeddings"]["model"] and body["embeddings"]["version"]
    assert body["broker"] == {"status": "ok", "backend": "memory", "required": True}
    assert body["llm"]["status"] == "ok" and body["llm"]["required"] is False
    assert body["llm"]["model"] and body["llm"]["version"]
    assert all(body[k]["required"] for k in ("database", "vectors", "embeddings", "broker"))


def test_health_is_503_when_the_vector_store_goes_down(tmp_path: Path) -> None:
    with running_chroma(tmp_path / "chroma") as (url, chroma):
        settings = server_settings(tmp_path / "data")
        settings.vectors = VectorSettings(url=url)
        with run_server(settings, ingest=False, with_chat=False) as live:
            with httpx.Client(base_url=live.base, timeout=60) as http:
                up = http.get("/health")
                assert up.status_code == 200, up.text
                assert up.json()["vectors"]["server_version"]
                chroma.terminate()
                chroma.wait(10)
                down = http.get("/health")
                assert down.status_code == 503, down.text
                body: dict[str, Any] = down.json()
                assert body["status"] == "unavailable" and body["down"] == ["vectors"]
                assert body["vectors"]["status"] == "unavailable"
                assert body["vectors"]["error"]["error_code"] == "SEARCH_003"
                assert body["database"]["status"] == "ok" and "llm" not in body
