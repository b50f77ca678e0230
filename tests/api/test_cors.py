"""CORS from `api.cors_origins` only (issue 12): none by default; a listed origin's preflight
is answered and its answers readable, any other preflight refused in the house shape.

In-process: preflights and the CORS headers of answers that need no backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from studyrag.app import create_app
from studyrag.config import APISettings, Settings

APP = "https://course.example.edu"
EVIL = "http://evil.example"


def client_for(tmp_path: Path, **api: object) -> httpx.AsyncClient:
    app = create_app(Settings(data_dir=tmp_path / "data", api=APISettings(**api)))  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1")


@pytest.fixture
async def listed(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(tmp_path, cors_origins=[APP + "/"]) as c:
        yield c


@pytest.fixture
async def default(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(tmp_path) as c:
        yield c


def preflight(origin: str, method: str = "POST", headers: str = "content-type") -> dict[str, str]:
    return {
        "origin": origin,
        "access-control-request-method": method,
        "access-control-request-headers": headers,
    }


def assert_refused(res: httpx.Response, origin: str) -> None:
    assert res.status_code == 403, res.text
    body = res.json()
    assert body["error_code"] == "REQUEST_005"
    assert body["details"]["origin"] == origin
    assert "cors_origins" in body["details"]["hint"]
    assert "access-control-allow-origin" not in res.headers


async def test_a_listed_origin_preflight_is_answered(listed: httpx.AsyncClient) -> None:
    res = await listed.options(
        "/api/search", headers=preflight(APP, headers="content-type, authorization")
    )
    assert res.status_code == 200, res.text
    assert res.headers["access-control-allow-origin"] == APP
    assert "POST" in res.headers["access-control-allow-methods"]
    allowed = res.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    # Never credentials: another origin's page cannot ride on this server's cookies.
    assert "access-control-allow-credentials" not in res.headers


async def test_a_listed_origin_can_read_answers(listed: httpx.AsyncClient) -> None:
    res = await listed.get("/openapi.json", headers={"origin": APP})
    assert res.status_code == 200
    assert res.headers["access-control-allow-origin"] == APP
    assert "x-request-id" in res.headers["access-control-expose-headers"].lower()


async def test_a_listed_origin_passes_the_origin_check(listed: httpx.AsyncClient) -> None:
    # A body over the limit: refused by the body limit (413), not by the Origin check (403).
    res = await listed.post("/api/search", headers={"origin": APP}, json={"query": "x" * (4 << 20)})
    assert res.status_code == 413, res.text
    assert res.headers["access-control-allow-origin"] == APP


async def test_another_origin_is_refused_when_some_are_listed(listed: httpx.AsyncClient) -> None:
    assert_refused(await listed.options("/api/search", headers=preflight(EVIL)), EVIL)
    res = await listed.get("/openapi.json", headers={"origin": EVIL})
    assert res.status_code == 200
    assert "access-control-allow-origin" not in res.headers
    assert (await listed.post("/api/search", headers={"origin": EVIL}, json={})).status_code == 403


@pytest.mark.parametrize("origin", [APP, EVIL, "null", "http://127.0.0.1:9999"])
async def test_by_default_every_preflight_is_refused(
    default: httpx.AsyncClient, origin: str
) -> None:
    assert_refused(await default.options("/api/notebooks", headers=preflight(origin)), origin)
    res = await default.get("/openapi.json", headers={"origin": origin})
    assert "access-control-allow-origin" not in res.headers


async def test_a_rebound_host_gets_no_cors_answer(listed: httpx.AsyncClient) -> None:
    res = await listed.options("/api/search", headers={**preflight(APP), "host": "evil.example"})
    assert res.status_code == 421
    assert "access-control-allow-origin" not in res.headers
