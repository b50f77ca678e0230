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

# Nothing but this origin: no inline script, no eval, no remote font, image or connection.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "font-src 'self' data:; connect-src 'self'; worker-src 'self'; object-src 'none'; "
    "frame-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


@router.get("/")
async def index() -> Response:
    """The single page; every view is a client-side route (#/...)."""
    body = await anyio.Path(WEB_DIR / "index.html").read_bytes()
    return Response(
        body,
        media_type=CONTENT_TYPES[".html"],
        headers={
            "content-security-policy": CSP,
            "cache-control": "no-cache",
            "x-frame-options": "DENY",
            **SECURITY_HEADERS,
        },
    )


@router.get("/static/{path:path}")
async def static(path: str) -> Response:
    """A file of the web folder (app code, styles, vendored libraries and their licences)."""
    target = (WEB_DIR / path).resolve()
    kind = CONTENT_TYPES.get(target.suffix.lower())
    if kind is None or not target.is_relative_to(WEB_DIR) or not await anyio.Path(target).is_file():
        raise RouteNotFound(f"No file /static/{path} in the web interface.")
    headers = {"cache-control": "no-cache", **SECURITY_HEADERS}
    if kind.startswith("text/html"):
        headers["content-security-policy"] = CSP
    return Response(await anyio.Path(target).read_bytes(), media_type=kind, headers=headers)
