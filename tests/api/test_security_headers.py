"""Every HTTP response carries the security headers (issue 12): the page's strict CSP unless
the route brings its own, nosniff, no referrer, no framing. In-process: these answers need no
backend, so no lifespan runs and no model is loaded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from studyrag.api.security_headers import PAGE_CSP
from studyrag.app import create_app
from studyrag.config import Settings


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(data_dir=tmp_path / "data"))
    # A route whose services are missing (no lifespan) fails with a 500: answered by
    # Starlette's ServerErrorMiddleware, outside every middleware of ours.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        yield c


def directives(csp: str) -> dict[str, str]:
    parts = (d.strip().split(None, 1) for d in csp.split(";") if d.strip())
    return {p[0]: (p[1] if len(p) > 1 else "") for p in parts}


def test_the_page_policy_is_strict() -> None:
    d = directives(PAGE_CSP)
    assert d["default-src"] == "'self'"
    assert d["script-src"] == "'self'"
    assert d["style-src"] == "'self'"
    assert d["object-src"] == "'none'"
    assert d["base-uri"] == "'none'"
    assert d["frame-ancestors"] == "'none'"
    assert d["worker-src"] == "'self'"  # PDF.js's worker, from /static/vendor/pdfjs/
    for sources in d.values():
        for source in sources.split():
            # Only this origin and local schemes; nothing inline, no eval, no remote host.
            assert source in ("'self'", "'none'", "data:", "blob:"), source


@pytest.mark.parametrize(
    ("method", "path", "status", "headers"),
    [
        ("GET", "/", 200, {}),
        ("GET", "/static/app.js", 200, {}),
        ("GET", "/static/vendor/pdfjs/pdf.worker.min.mjs", 200, {}),
        ("GET", "/openapi.json", 200, {}),
        ("GET", "/docs", 200, {}),
        ("GET", "/static/nope.js", 404, {}),
        ("GET", "/no/such/route", 404, {}),
        ("PUT", "/", 405, {}),
        # Refused by the Host check, before any route runs.
        ("GET", "/", 421, {"host": "evil.example"}),
        # Refused by the Origin check.
        ("POST", "/api/search", 403, {"origin": "http://evil.example"}),
        # The services are missing: a 500 from outside our middleware.
        ("GET", "/api/notebooks", 500, {}),
    ],
)
async def test_every_response_carries_the_security_headers(
    client: httpx.AsyncClient, method: str, path: str, status: int, headers: dict[str, str]
) -> None:
    res = await client.request(method, path, headers=headers)
    assert res.status_code == status, res.text
    assert res.headers["content-security-policy"] == PAGE_CSP
    assert res.headers["x-content-type-options"] == "nosniff"
    assert res.headers["referrer-policy"] == "no-referrer"
    assert res.headers["x-frame-options"] == "DENY"
    # One of each, never two competing values.
    for name in ("content-security-policy", "x-content-type-options", "referrer-policy"):
        assert len(res.headers.get_list(name)) == 1, name


async def test_the_page_links_its_code_and_has_none_inline(client: httpx.AsyncClient) -> None:
    page = (await client.get("/")).text
    assert '<script type="module" src="/static/app.js">' in page
    assert "<style" not in page and " style=" not in page
    assert page.count("<script") == 1
