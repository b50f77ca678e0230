"""/docs works offline (issue 12: FastAPI's loads Swagger UI from a CDN, a blank page without
internet): the vendored Swagger UI under the page's strict CSP, in Debian's chromium with
every request to another origin aborted. /redoc is off.

The server runs without its lifespan: /docs, /static and /openapi.json need no backend, and
what is tested is the page, not the API behind it."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from studyrag.api.routes.web import WEB_DIR
from studyrag.app import create_app
from studyrag.config import Settings
from tests.conftest import free_port
from tests.web.harness import Watch, launch, shot

SWAGGER_UI = "5.35.0"
REMOTE = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.I)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("docs") / "data"))
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"docs-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def test_the_docs_page_names_no_other_origin(base: str) -> None:
    res = httpx.get(f"{base}/docs")
    assert res.status_code == 200
    assert res.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in res.headers["content-security-policy"]
    assert not REMOTE.search(res.text), res.text
    # Every script is a file of this server; none is inline.
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", res.text, re.S)
    assert scripts and all('src="/static/' in attrs and not body.strip() for attrs, body in scripts)
    for path in re.findall(r'(?:src|href)="(/static/[^"]+)"', res.text):
        assert httpx.get(base + path).status_code == 200, path


def test_redoc_is_off(base: str) -> None:
    assert httpx.get(f"{base}/redoc").status_code == 404


def test_the_vendored_swagger_ui_is_the_pinned_one() -> None:
    vendor = WEB_DIR / "vendor" / "swagger-ui"
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "LICENSE.txt", "NOTICE.txt"):
        assert (vendor / name).is_file(), name
    assert f'PACKAGE_VERSION:"{SWAGGER_UI}"' in (vendor / "swagger-ui-bundle.js").read_text("utf-8")
    assert f"| Swagger UI (swagger-ui-dist) | {SWAGGER_UI} |" in (
        WEB_DIR / "vendor/README.md"
    ).read_text("utf-8")


@pytest.mark.slow
def test_the_docs_page_renders_offline_in_chromium(base: str) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    watch = Watch(base)
    with playwright_api.sync_playwright() as p:
        browser = launch(p)
        try:
            ctx = browser.new_context(viewport={"width": 1280, "height": 900})
            watch.attach(ctx)  # any request to another origin is aborted and recorded
            page: Any = ctx.new_page()
            page.goto(f"{base}/docs")
            page.wait_for_selector(".opblock-summary-path", timeout=30_000)
            # Every operation of the schema is listed.
            spec = httpx.get(f"{base}/openapi.json").json()
            operations = sum(len(ops) for ops in spec["paths"].values())
            assert page.locator(".opblock").count() == operations
            assert "StudyRAG" in page.locator(".info .title").inner_text()
            # An operation opens, with its declared error responses.
            page.locator(".opblock-summary", has_text="/api/search").first.click()
            page.wait_for_selector(".responses-table .response-col_status", timeout=10_000)
            statuses = page.locator(".responses-table .response-col_status").all_inner_texts()
            assert {"200", "422"} <= {s.split()[0] for s in statuses if s.strip()}, statuses
            path: Path = shot(page, "docs-offline")
            assert path.stat().st_size > 10_000
        finally:
            browser.close()
    watch.clean()  # no dialog, no request to another origin, no CSP violation, no page error
