"""Host and Origin checks (pure ASGI): DNS rebinding and cross-site requests are refused.

- Host: every HTTP request and WebSocket handshake must name the server by one of its names:
  127.0.0.1, localhost, ::1, the bound host, or a name in `api.allowed_hosts` (a reverse
  proxy's). Bound to 0.0.0.0 or :: with no `api.allowed_hosts`, any Host is served. Else 421
  REQUEST_004.
- Origin: a WebSocket handshake and a state-changing request (POST, PUT, PATCH, DELETE) that
  carries an Origin must come from the server's own origin (the Host it was sent to) or one
  in `api.allowed_origins` or `api.cors_origins` (api/cors.py); without Origin, a browser's
  `Sec-Fetch-Site` other than same-origin/none is refused too. Else 403 REQUEST_005.
  Programs (CLI, curl, the openai client) send neither header and are unaffected.

The rules are in docs/protocol.md; the settings in docs/operations.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from studyrag.api.errors import AreaOf, count_error
from studyrag.config import Settings
from studyrag.errors import HostNotAllowed, OriginNotAllowed, StudyRAGError

log = logging.getLogger(__name__)

LOCAL_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
ANY_ADDRESS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - names, not a bind
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def host_name(host: str) -> str:
    """The name part of a Host header or netloc, lower-cased: no port, no IPv6 brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") > 1:  # a bare IPv6 address
        return host
    return host.split(":", 1)[0].rstrip(".")


def allowed_host(host: str, *, bound: str, extra: list[str]) -> bool:
    """Whether a request's Host names this server (see the module docstring)."""
    names = {host_name(h) for h in extra}
    if "*" in names or (not names and host_name(bound) in ANY_ADDRESS):
        return True
    return host_name(host) in names | LOCAL_NAMES | {host_name(bound)}


def allowed_origin(origin: str, *, host: str, extra: list[str]) -> bool:
    """Whether an Origin is the server's own (same host and port as Host) or allow-listed."""
    origin = origin.strip().lower().rstrip("/")
    listed = {o.strip().lower().rstrip("/") for o in extra}
    if "*" in listed or origin in listed:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False  # "null" (sandboxed frames, file://) and anything stranger
    default = "443" if parts.scheme == "https" else "80"

    def netloc(value: str) -> tuple[str, int]:
        split = urlsplit("//" + value.strip().lower())
        return (split.hostname or "").rstrip("."), split.port or int(default)

    try:
        return netloc(parts.netloc) == netloc(host)
    except ValueError:  # a port that is not a number
        return False


class HostOriginMiddleware:
    """Pure ASGI; answers refusals in the area's error shape, before any route runs."""

    def __init__(
        self, app: ASGIApp, *, settings: Callable[[Scope], Settings | None], area_of: AreaOf
    ) -> None:
        self.app = app
        self.settings = settings
        self.area_of = area_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        error = self.check(scope)
        if error is None:
            await self.app(scope, receive, send)
            return
        area = self.area_of(scope)
        count_error(scope, error.error_code, area.name)
        rid = str(scope.get("state", {}).get("request_id") or "")
        log.warning("refused %s %s: %s", scope["type"], scope.get("path"), error.message)
        response = JSONResponse(area.body(error, rid), status_code=error.status_code)
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            if "websocket.http.response" in scope.get("extensions", {}):
                await response(scope, receive, send)  # the handshake answered with the body
            else:
                await send({"type": "websocket.close", "code": 1008})  # a plain 403
            return
        await response(scope, receive, send)

    def check(self, scope: Scope) -> StudyRAGError | None:
        cfg = self.settings(scope)
        app = scope.get("app")
        api = cfg.api if cfg is not None else None
        bound = str(getattr(getattr(app, "state", None), "bind_host", None) or "")
        if not bound:
            bound = api.host if api is not None else "127.0.0.1"
        allowed_hosts = api.allowed_hosts if api is not None else []
        # A page allowed to read answers (CORS) may also send what it reads about.
        allowed_origins = [*api.allowed_origins, *api.cors_origins] if api is not None else []
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if host and not allowed_host(host, bound=bound, extra=allowed_hosts):
            return HostNotAllowed(
                f"This server does not answer to the host name {host_name(host)!r}.",
                details={"host": host[:200]},
            )
        if scope["type"] == "http" and scope["method"] not in UNSAFE_METHODS:
            return None
        origin = headers.get("origin")
        if origin is not None:
            if not allowed_origin(origin, host=host, extra=allowed_origins):
                return OriginNotAllowed(
                    f"Requests from the origin {origin[:200]!r} are not allowed.",
                    details={"origin": origin[:200]},
                )
            return None
        site = headers.get("sec-fetch-site", "").strip().lower()
        if site and site not in ("same-origin", "none"):
            return OriginNotAllowed(
                f"A {site} browser request cannot change this server's data.",
                details={"sec_fetch_site": site[:40]},
            )
        return None
