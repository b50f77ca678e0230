"""schemathesis over every operation of the app's OpenAPI schema (issue 12): no 5xx, and every
answer (status, content type, body, headers) is what the schema declares.

A real uvicorn server with real SQLite and Chroma; the chat model and the embedder are the
fakes of backends/*/fake.py: what is fuzzed is the HTTP layer (validation, limits, the error
shape, the declared responses), not answers or retrieval, and the real model would spend the
time budget generating text. The example count per operation is bounded (FUZZ_EXAMPLES) so
the run stays inside `make test`; docs/reliability.md has the figures of the last runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
import httpx  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from studyrag.app import create_app  # noqa: E402
from studyrag.backends.embeddings.fake import FakeEmbedder  # noqa: E402
from studyrag.backends.llm.fake import FakeChatModel  # noqa: E402
from studyrag.errors import BackendUnavailable, BrokerUnavailable, LLMUnavailable  # noqa: E402
from tests.api.conftest import LiveServer, run_server, server_settings  # noqa: E402

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
REQUESTS: dict[str, int] = {}
STATUSES: dict[int, int] = {}
# A 503 is the declared answer when a backend this test runs without is asked for (Ollama
# for a model pull): the server works, the backend is not there. Any other 5xx is a defect.
BACKEND_DOWN = {e.error_code for e in (LLMUnavailable, BackendUnavailable, BrokerUnavailable)}


def no_server_error(ctx: Any, response: Any, case: Any) -> bool:
    """schemathesis's not_a_server_error, but a 503 for a backend that is absent passes."""
    STATUSES[response.status_code] = STATUSES.get(response.status_code, 0) + 1
    if response.status_code < 500:
        return True
    try:
        code = response.json().get("error_code")
    except (ValueError, AttributeError):
        code = None
    if response.status_code == 503 and code in BACKEND_DOWN:
        return True
    raise AssertionError(f"Server error {response.status_code}: {response.text[:500]}")


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    cfg = server_settings(tmp_path_factory.mktemp("fuzz") / "data")
    app = create_app(cfg, chat_model=FakeChatModel(), embedder=FakeEmbedder())
    with run_server(cfg, app=app) as live:
        yield live
    total = sum(REQUESTS.values())
    print(f"\nschemathesis: {total} requests over {len(REQUESTS)} operations; statuses {STATUSES}")


def real_ids(live: LiveServer) -> dict[str, list[str]]:
    """Ids of things that exist: half the generated cases name them, so routes get past
    their 404 (a notebook, its ingested document and chunk, a job, a conversation)."""
    with httpx.Client(base_url=live.base, timeout=60) as http:
        notebook = http.get("/api/notebooks").json()["items"][0]["id"]
        document = http.get("/api/documents").json()["items"][0]["id"]
        hit = http.post("/api/search", json={"query": "chlorophyll", "mode": "lexical"}).json()
        chunk = hit["results"][0]["chunk_id"]
        files = {"files": ("more.md", b"# More\n\nMitochondria make ATP.", "text/markdown")}
        job = http.post(f"/api/notebooks/{notebook}/documents", files=files).json()["job_id"]
        answer = http.post("/api/chat/message", json={"message": "Why are leaves green?"})
        conversation = answer.json()["conversation"]["id"]
    return {
        "notebook_id": [notebook],
        "document_id": [document],
        "chunk_id": [str(chunk)],
        "job_id": [job],
        "conversation_id": [conversation],
    }


def test_every_operation_answers_as_its_schema_says(fuzzed: LiveServer) -> None:
    # One hypothesis run per operation (schemathesis's pytest loader does not work with our
    # pytest), failures gathered so one run reports every operation that fails.
    schema = schemathesis.openapi.from_url(f"{fuzzed.base}/openapi.json")
    ids = real_ids(fuzzed)

    def naming_real_ids(drawn: tuple[Any, bool, int]) -> Any:
        case, real, pick = drawn
        # Deletes keep their random ids: the things every other operation reaches stay.
        if real and case.path_parameters and case.method != "DELETE":
            for name in case.path_parameters:
                if name in ids:
                    case.path_parameters[name] = ids[name][pick % len(ids[name])]
        return case

    failures: dict[str, str] = {}
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        @given(
            case=st.tuples(operation.as_strategy(), st.booleans(), st.integers(0, 9)).map(
                naming_real_ids
            )
        )
        def run(case: Any) -> None:
            label = case.operation.label
            REQUESTS[label] = REQUESTS.get(label, 0) + 1
            case.call_and_validate(
                timeout=60,
                excluded_checks=[not_a_server_error, positive_data_acceptance],
                additional_checks=[no_server_error],
            )

        try:
            run()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - schemathesis raises exception groups
            failures[operation.label] = str(exc)[:3000]
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    assert operations == len(REQUESTS) > 40
