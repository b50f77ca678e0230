"""Every number a request may carry is bounded (issue 12: huge integers gave 500 OverflowError),
and flags and numbers are not coerced from strings or booleans.

The rule is checked over the app's whole route table (its OpenAPI schema: every query, path
and body field of every operation) and over the models of what arrives outside it (WebSocket
frames, import archives), so a new unbounded field fails here. The probe values of the issue
are then sent to a real server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from studyrag.app import create_app
from studyrag.config import Settings
from studyrag.schemas import archive, chat
from tests.api.conftest import LiveServer, run_server, server_settings

HUGE = 2**63  # one past SQLite's int64


def unbounded(schema: Any, where: str, defs: dict[str, Any], seen: frozenset[str]) -> list[str]:
    """The paths of integer/number fields of `schema` without an upper or a lower bound."""
    if not isinstance(schema, dict):
        return []
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            return []
        return unbounded(defs[name], f"{where}<{name}>", defs, seen | {name})
    found = []
    if schema.get("type") in ("integer", "number") and not (
        ("maximum" in schema or "exclusiveMaximum" in schema)
        # Below too: GET /api/chunks/-2**77 was a 500 (OverflowError) found by schemathesis.
        and ("minimum" in schema or "exclusiveMinimum" in schema)
    ):
        found.append(where)
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, []):
            found += unbounded(sub, where, defs, seen)
    found += unbounded(schema.get("items"), f"{where}[]", defs, seen)
    for name, sub in schema.get("properties", {}).items():
        found += unbounded(sub, f"{where}.{name}", defs, seen)
    found += unbounded(schema.get("additionalProperties"), f"{where}{{}}", defs, seen)
    return found


def test_every_number_of_every_route_is_bounded(tmp_path: Path) -> None:
    spec = create_app(Settings(data_dir=tmp_path / "data")).openapi()
    defs = spec.get("components", {}).get("schemas", {})
    found: list[str] = []
    operations = 0
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            operations += 1
            for param in op.get("parameters", []):
                where = f"{method.upper()} {path} {param['in']}:{param['name']}"
                found += unbounded(param.get("schema"), where, defs, frozenset())
            for media in op.get("requestBody", {}).get("content", {}).values():
                found += unbounded(
                    media.get("schema"), f"{method.upper()} {path}", defs, frozenset()
                )
    assert operations > 40  # the walk saw the whole API
    assert found == []


def input_models() -> Iterator[type[BaseModel]]:
    """Models of what a client sends outside the OpenAPI schema: frames and archives."""
    for module in (chat, archive):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseModel):
                if issubclass(value, archive._Strict) or value.__name__.startswith("WS"):
                    yield value


@pytest.mark.parametrize("model", list(input_models()), ids=lambda m: m.__name__)
def test_every_number_of_frames_and_archives_is_bounded(model: type[BaseModel]) -> None:
    schema = model.model_json_schema()
    assert unbounded(schema, model.__name__, schema.get("$defs", {}), frozenset()) == []


def test_a_typing_flag_is_a_boolean() -> None:
    with pytest.raises(ValueError):
        chat.WSTypingFrame.model_validate({"type": "typing", "is_typing": "yes"})
    assert chat.WSTypingFrame.model_validate({"type": "typing", "is_typing": True}).is_typing


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = server_settings(tmp_path_factory.mktemp("bounds"))
    with run_server(settings, ingest=False, with_chat=False) as live:
        yield live


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=60) as client:
        yield client


@pytest.fixture
def conversation(http: httpx.Client) -> str:
    response = http.post("/api/chat/conversations", json={})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def refused(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["message"].startswith("Invalid request") and body["details"]["hint"], body
    assert body["request_id"] == response.headers["x-request-id"]
    assert any(field in e["field"] for e in body["details"]["errors"]), body


def test_huge_integers_in_queries_are_422(http: httpx.Client, conversation: str) -> None:
    refused(
        http.get("/api/chat/conversations", params={"offset": "99999999999999999999"}), "offset"
    )
    messages = f"/api/chat/conversations/{conversation}/messages"
    refused(http.get(messages, params={"before_seq": HUGE}), "before_seq")
    refused(http.get(messages, params={"after_seq": HUGE}), "after_seq")
    refused(http.get(f"/api/chunks/{HUGE}"), "chunk_id")
    # The largest allowed values are answered, not overflowed.
    assert http.get(messages, params={"before_seq": HUGE - 1}).status_code == 200
    assert http.get(messages, params={"after_seq": HUGE - 1}).status_code == 200
    assert http.get("/api/chat/conversations", params={"offset": HUGE - 1}).status_code == 200
    assert http.get(f"/api/chunks/{HUGE - 1}").status_code == 404


def test_huge_and_lax_cleanup_bodies_are_422(http: httpx.Client, conversation: str) -> None:
    cleanup = f"/api/chat/conversations/{conversation}/cleanup"
    refused(http.post(cleanup, json={"keep_last": HUGE}), "keep_last")
    refused(http.post(cleanup, json={"older_than_seconds": 1e300}), "older_than_seconds")
    refused(http.post(cleanup, json={"older_than_seconds": True}), "older_than_seconds")
    refused(http.post(cleanup, json={"keep_last": "3"}), "keep_last")
    refused(http.post(cleanup, json={"purge": "yes"}), "purge")
    for body in ({"keep_last": HUGE - 1}, {"older_than_seconds": 100 * 365 * 86_400}):
        response = http.post(cleanup, json=body)
        assert response.status_code == 200, response.text


def test_search_scores_are_finite_and_bounded(http: httpx.Client) -> None:
    refused(http.post("/api/search", json={"query": "x", "min_score": 1e300}), "min_score")
