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
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from studyrag.app import create_app  # noqa: E402
from studyrag.backends.embeddings.fake import FakeEmbedder  # noqa: E402
from studyrag.backends.llm.fake import FakeChatModel  # noqa: E402
from studyrag.errors import BackendUnavailable, BrokerUnavailable, LLMUnavailable  # noqa: E402
from tests.api.conftest import LiveServer, run_server, server_settings  # noqa: E402

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))
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


def test_every_operation_answers_as_its_schema_says(fuzzed: LiveServer) -> None:
    # One hypothesis run per operation (schemathesis's pytest loader does not work with our
    # pytest), failures gathered so one run reports every operation that fails.
    schema = schemathesis.openapi.from_url(f"{fuzzed.base}/openapi.json")
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
        @given(case=operation.as_strategy())
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
