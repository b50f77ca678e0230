"""The web interface is served by the app: /, its modules, styles and vendored libraries, with
the right content types, a strict CSP on the page, and no reference to any outside origin."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from studyrag.api.routes.web import WEB_DIR
from studyrag.app import create_app
from studyrag.config import Settings

OWN_FILES = sorted(
    p for p in WEB_DIR.rglob("*") if p.is_file() and "vendor" not in p.relative_to(WEB_DIR).parts
)
VENDORED = {
    "vendor/dompurify/purify.es.mjs": "DOMPurify 3.5.0",
    "vendor/marked/marked.esm.js": "marked v15.0.12",
    "vendor/pdfjs/pdf.min.mjs": "4.10.38",
    "vendor/pdfjs/pdf.worker.min.mjs": "4.10.38",
}


@pytest.fixture
async def client(tmp_path: Path) -> httpx.AsyncClient:
    # No lifespan: these routes need no backend, so no model is loaded.
    app = create_app(Settings(data_dir=tmp_path / "data"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        yield c  # type: ignore[misc]


async def test_index_is_html_with_a_strict_csp(client: httpx.AsyncClient) -> None:
    res = await client.get("/")
    assert res.status_code == 200
    assert res.headers["content-type"].startswith("text/html")
    csp = res.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert res.headers["x-content-type-options"] == "nosniff"
    assert '<script type="module" src="/static/app.js">' in res.text


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/static/app.js", "text/javascript"),
        ("/static/js/chat.js", "text/javascript"),
        ("/static/app.css", "text/css"),
        *[(f"/static/{p}", "text/javascript") for p in VENDORED],
        ("/static/vendor/pdfjs/LICENSE.txt", "text/plain"),
        ("/static/vendor/dompurify/LICENSE.txt", "text/plain"),
        ("/static/vendor/marked/LICENSE.txt", "text/plain"),
    ],
)
async def test_files_are_served_with_their_types(
    client: httpx.AsyncClient, path: str, kind: str
) -> None:
    res = await client.get(path)
    assert res.status_code == 200, res.text
    assert res.headers["content-type"].startswith(kind)
    assert len(res.content) > 100


@pytest.mark.parametrize("path", sorted(VENDORED))
def test_vendored_versions_are_the_pinned_ones(path: str) -> None:
    assert VENDORED[path] in (WEB_DIR / path).read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "path", ["/static/../app.py", "/static/%2e%2e/app.py", "/static/nope.js", "/static/js"]
)
async def test_nothing_outside_the_web_folder(client: httpx.AsyncClient, path: str) -> None:
    res = await client.get(path)
    assert res.status_code == 404
    assert res.json()["error_code"] == "NOT_FOUND"


@pytest.mark.parametrize("path", OWN_FILES, ids=lambda p: str(p.relative_to(WEB_DIR)))
def test_own_files_reference_no_outside_origin(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"https?://", text), f"{path.name} names an outside origin"
    assert "innerHTML" not in text, f"{path.name} writes HTML unsanitized"


def test_vendored_code_loads_nothing_remote() -> None:
    for path in VENDORED:
        text = (WEB_DIR / path).read_text(encoding="utf-8")
        assert not re.search(r"""(import\s*\(?|from\s+)["']https?://""", text), path
        assert not re.search(r"""fetch\(\s*["']https?://""", text), path


def test_package_data_ships_the_web_folder() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[2]
    data = tomllib.loads((root / "pyproject.toml").read_text())
    globs = data["tool"]["setuptools"]["package-data"]["studyrag"]
    shipped = {p for g in globs if g.startswith("web") for p in (root / "src/studyrag").glob(g)}
    assert set(WEB_DIR.rglob("*.*")) <= shipped
