"""CORS from an allow-list (`api.cors_origins`, empty by default): pure ASGI over Starlette's
CORSMiddleware, built from the running app's settings.

- A listed origin's preflight is answered by CORSMiddleware (methods, the request headers
  below, max age), and its requests' answers carry `Access-Control-Allow-Origin`.
- Any other preflight (an `OPTIONS` with `Origin` and `Access-Control-Request-Method`) is
  refused in the house shape: 403 REQUEST_005 with no CORS header, so the browser stops there.
  With the list empty that is every preflight: no other origin's page can read an answer.
- No credentials mode (`Access-Control-Allow-Credentials` is never sent): a page of another
  origin authenticates with `Authorization`, never with this server's cookies.

Runs inside the Host check (a rebound name is refused first) and before the Origin check,
which lets a listed origin's state-changing requests through too (api/origin.py).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi.responses import JSONResponse
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from studyrag.api.errors import AreaOf, count_error
from studyrag.config import Settings
from studyrag.errors import OriginNotAllowed

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
REQUEST_HEADERS = ("authorization", "content-type", "x-request-id", "last-event-id")
# What a page may read of an answer besides the CORS-safelisted headers.
EXPOSED = ("x-request-id", "retry-after", "content-disposition", "location")
MAX_AGE = 600


def normalise(origin: str) -> str:
    return origin.strip().lower().rstrip("/")


class AllowListCORSMiddleware:
    """CORS for `api.cors_origins` only; the CORSMiddleware is rebuilt when the list changes."""

    def __init__(
        self, app: ASGIApp, *, settings: Callable[[Scope], Settings | None], area_of: AreaOf
    ) -> None:
        self.app = app
        self.settings = settings
        self.area_of = area_of
        self._origins: tuple[str, ...] = ()
        self._cors: CORSMiddleware | None = None

    def cors(self, origins: tuple[str, ...]) -> CORSMiddleware:
        if self._cors is None or origins != self._origins:
            self._cors = CORSMiddleware(
                self.app,
                allow_origins=list(origins),
                allow_methods=list(METHODS),
                allow_headers=list(REQUEST_HEADERS),
                expose_headers=list(EXPOSED),
                allow_credentials=False,
                max_age=MAX_AGE,
            )
            self._origins = origins
        return self._cors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cfg = self.settings(scope)
        origins = tuple(normalise(o) for o in cfg.api.cors_origins) if cfg is not None else ()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        preflight = scope["method"] == "OPTIONS" and "access-control-request-method" in headers
        listed = "*" in origins or normalise(origin) in origins
        if preflight and not listed:
            await self.refuse(scope, receive, send, origin)
        elif listed:
            await self.cors(origins)(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def refuse(self, scope: Scope, receive: Receive, send: Send, origin: str) -> None:
        error = OriginNotAllowed(
            f"Pages of the origin {origin[:200]!r} may not call this API (CORS).",
            details={"origin": origin[:200]},
            hint="Add the page's origin to api.cors_origins (STUDYRAG_API__CORS_ORIGINS).",
        )
        area = self.area_of(scope)
        count_error(scope, error.error_code, area.name)
        rid = str(scope.get("state", {}).get("request_id") or "")
        response = JSONResponse(area.body(error, rid), status_code=error.status_code)
        await response(scope, receive, send)
