"""Security headers on every HTTP response (pure ASGI: SSE and streamed exports pass through).

- `Content-Security-Policy`: the web interface's strict policy (`PAGE_CSP`) on every response
  that does not bring its own. Scripts, styles, connections and workers come from this origin
  only: no inline script or style, no eval, no remote origin, no plugin, no frame; the page
  can be framed by nobody. JSON and files get it too: a response opened directly in a tab
  can then load nothing either. Originals keep their own `default-src 'none'; sandbox`
  (api/routes/documents.py): a route's own policy is never replaced.
- `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`, `X-Frame-Options: DENY`
  (frame-ancestors for browsers that predate CSP 2), each unless the route set it.

The rules are in docs/protocol.md ("Security headers").
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# worker-src 'self': PDF.js runs its worker from /static/vendor/pdfjs/pdf.worker.min.mjs.
# img-src data: blob:: PDF.js draws pages into canvases it may hand over as blobs, and the
# vendored Swagger UI's stylesheet (/docs) draws its icons from data: URIs.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "font-src 'self' data:; connect-src 'self'; worker-src 'self'; object-src 'none'; "
    "frame-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": PAGE_CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def add_security_headers(headers: MutableHeaders) -> None:
    """Set each security header the response does not set itself."""
    for name, value in SECURITY_HEADERS.items():
        if name not in headers:
            headers[name] = value


class SecurityHeadersMiddleware:
    """Adds SECURITY_HEADERS to the start of every HTTP response; WebSockets pass untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                add_security_headers(MutableHeaders(scope=message))
            await send(message)

        await self.app(scope, receive, send_with_headers)
