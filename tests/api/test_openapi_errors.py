"""The OpenAPI schema declares the errors each route answers with (issue 12: it declared only
200/201/422), each with the error shape. Walked over the whole route table, so a new route
inherits its area's declarations or fails here; tests/api/test_schema_fuzz.py then holds the
running server to them (schemathesis's undocumented-status and response-schema checks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from studyrag.app import create_app
from studyrag.config import Settings


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return create_app(Settings(data_dir=tmp_path_factory.mktemp("spec") / "data")).openapi()


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m.upper(), p, op) for p, ops in spec["paths"].items() for m, op in ops.items()]


def error_schema(op: dict[str, Any], status: str) -> str:
    ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
    return str(ref.rsplit("/", 1)[-1])


def test_every_operation_declares_the_errors_every_request_can_meet(spec: dict[str, Any]) -> None:
    ops = operations(spec)
    assert len(ops) > 40
    for method, path, op in ops:
        declared = set(op["responses"])
        # Host refused, Origin refused, invalid input, anything unexpected.
        assert {"421", "403", "422", "500"} <= declared, (method, path, sorted(declared))
        shape = "OpenAIErrorPublic" if path.startswith("/v1/") else "ErrorPublic"
        for status in declared - {"200", "201", "202", "204", "206"}:
            if status == "503" and path == "/health":
                continue
            assert error_schema(op, status) == shape, (method, path, status)
            assert op["responses"][status]["description"].startswith("Error: "), (path, status)


@pytest.mark.parametrize(
    ("method", "path", "statuses"),
    [
        ("GET", "/api/notebooks/{notebook_id}", {"404"}),
        ("POST", "/api/notebooks", {"409"}),
        ("GET", "/api/documents/{document_id}/file", {"404", "416"}),
        ("POST", "/api/documents", {"413", "415"}),
        ("GET", "/api/chunks/{chunk_id}", {"404"}),
        ("GET", "/api/jobs/{job_id}", {"404"}),
        ("POST", "/api/search", {"400", "503"}),
        ("POST", "/api/chat/message", {"404", "409", "413", "429", "503"}),
        ("POST", "/v1/chat/completions", {"401", "413", "429", "503"}),
        ("PUT", "/api/config", {"409"}),
        ("POST", "/api/models/pull", {"503"}),
        ("POST", "/api/notebooks/import", {"413"}),
    ],
)
def test_routes_declare_what_their_services_refuse_with(
    spec: dict[str, Any], method: str, path: str, statuses: set[str]
) -> None:
    declared = set(spec["paths"][path][method.lower()]["responses"])
    assert statuses <= declared, sorted(declared)


def test_the_error_shape_is_in_the_schema(spec: dict[str, Any], tmp_path: Path) -> None:
    shape = spec["components"]["schemas"]["ErrorPublic"]
    assert set(shape["required"]) == {"error_code", "message", "details", "request_id"}
    openai = spec["components"]["schemas"]["OpenAIErrorObject"]
    assert {"message", "type", "code"} <= set(openai["required"])


async def test_an_unmatched_v1_path_answers_in_openai_shape(tmp_path: Path) -> None:
    # Found by schemathesis: a model name with a newline matches no route; the 404 was in
    # the house shape where /v1's schema (and OpenAI clients) expect OpenAI's.
    import httpx

    app = create_app(Settings(data_dir=tmp_path / "data"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        res = await client.get("/v1/models/a%0Ab")
        assert res.status_code == 404
        assert res.json()["error"]["code"] == "NOT_FOUND"
        other = await client.get("/api/no-such-route")
        assert other.status_code == 404 and other.json()["error_code"] == "NOT_FOUND"
