"""The web interface: GET / serves index.html, GET /static/... the files of studyrag/web.

Explicit routes rather than StaticFiles: the content types do not depend on the machine's
mimetypes table (`.mjs` must be JavaScript for module scripts and PDF.js's worker), the
HTML carries a strict Content-Security-Policy, and a path can never leave the web folder.
"""

from __future__ import annotations

from pathlib import Path

import anyio
from fastapi import APIRouter, Depends
from fastapi.responses import Response

from studyrag.auth.policy import PUBLIC
from studyrag.errors import RouteNotFound

# The page and its files are public: it asks the API who you are (and shows the login).
router = APIRouter(include_in_schema=False, dependencies=[Depends(PUBLIC)])

WEB_DIR = Path(__file__).resolve().parent.parent.parent / "web"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".json": "application/json",
    # PDF.js's standard fonts (fonts a PDF names without embedding them)
    ".pfb": "application/octet-stream",
    ".ttf": "font/ttf",
}


@router.get("/")
async def index() -> Response:
    """The single page; every view is a client-side route (#/...)."""
    body = await anyio.Path(WEB_DIR / "index.html").read_bytes()
    return Response(
        body,
        media_type=CONTENT_TYPES[".html"],
        # The strict policy and the other security headers: api/security_headers.py.
        headers={"cache-control": "no-cache"},
    )


@router.get("/docs")
async def docs() -> Response:
    """The API reference: the vendored Swagger UI (web/vendor/swagger-ui) over /openapi.json.

    FastAPI's own /docs loads Swagger UI from a CDN (a blank page offline) and starts it with
    an inline script the page's CSP forbids; /redoc is off (its bundle needs inline styles).
    """
    body = await anyio.Path(WEB_DIR / "docs.html").read_bytes()
    return Response(body, media_type=CONTENT_TYPES[".html"], headers={"cache-control": "no-cache"})


@router.get("/static/{path:path}")
async def static(path: str) -> Response:
    """A file of the web folder (app code, styles, vendored libraries and their licences)."""
    target = (WEB_DIR / path).resolve()
    kind = CONTENT_TYPES.get(target.suffix.lower())
    if kind is None or not target.is_relative_to(WEB_DIR) or not await anyio.Path(target).is_file():
        raise RouteNotFound(f"No file /static/{path} in the web interface.")
    body = await anyio.Path(target).read_bytes()
    return Response(body, media_type=kind, headers={"cache-control": "no-cache"})
