"""One error shape for every HTTP response, plus the request-id and body-limit ASGI middleware.

Every error body comes from a StudyRAGError class (errors.py). Which class answers a request
that fails before its route runs (invalid, too large) is the route's area's choice: see
AreaErrors and api/main.py, which gives each router its own.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from studyrag.api.openapi import Responses, error_responses
from studyrag.api.security_headers import add_security_headers
from studyrag.config import Settings
from studyrag.errors import (
    CsrfRejected,
    Forbidden,
    HostNotAllowed,
    HTTPError,
    InvalidRequest,
    MethodNotAllowed,
    OriginNotAllowed,
    RateLimited,
    RequestTooLarge,
    RouteNotFound,
    StudyRAGError,
    Unauthorized,
)
from studyrag.observability.logs import request_id_var
from studyrag.schemas.errors import ErrorPublic

log = logging.getLogger(__name__)


def house_body(error: StudyRAGError, request_id: str) -> dict[str, Any]:
    """The one error shape (errors.py): error_code, message, details, request_id."""
    return error.to_dict(request_id)


ErrorBody = Callable[[StudyRAGError, str], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class AreaErrors:
    """The error classes one area of the API refuses a request with before its route runs,
    its name (the `area` label of the error metrics) and how its error bodies look."""

    # A body, path or query that fails validation.
    invalid: type[StudyRAGError] = InvalidRequest
    # A JSON body over the size limit; None when the area's routes limit their own (uploads).
    too_large: type[StudyRAGError] | None = RequestTooLarge
    name: str = "none"
    # Every area answers in the house shape but /v1, which speaks OpenAI's (docs/protocol.md).
    body: ErrorBody = house_body
    # ... and the OpenAPI schema of that shape.
    schema: type[BaseModel] = ErrorPublic
    # The errors any route of the area can meet once it runs (the services it calls), for
    # the OpenAPI schema; a route declares its own besides (api/openapi.py).
    raises: tuple[type[StudyRAGError], ...] = ()

    def responses(self) -> Responses:
        """The OpenAPI `responses` every route of the area shares."""
        before_route: list[type[StudyRAGError]] = [
            self.invalid,
            HostNotAllowed,
            OriginNotAllowed,
            # Multi-user mode: no or a bad credential, a scope or role short, a cookie
            # change without a same-origin mark.
            Unauthorized,
            Forbidden,
            CsrfRejected,
            StudyRAGError,  # 500: anything unexpected, with the request id to report
        ]
        if self.too_large is not None:
            before_route.append(self.too_large)
        return error_responses(*before_route, *self.raises, model=self.schema)


# Paths no area claims (unknown routes) get the generic classes.
NO_AREA = AreaErrors()
AreaOf = Callable[[Scope], AreaErrors]


def request_id_of(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id") or "")


def count_error(scope: Scope, code: str, area: str) -> None:
    """Count an error reported to a client in the app's metrics."""
    metrics = getattr(getattr(scope.get("app"), "state", None), "metrics", None)
    if metrics is not None:
        metrics.error(code, area)


class RequestIdMiddleware:
    """Pure ASGI (safe for streaming): tags each request with an id echoed as X-Request-ID."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        # Every log line written while serving this request (and by the tasks it starts)
        # carries the id.
        token = request_id_var.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                # An error handler outside this middleware may have set it already.
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append((b"x-request-id", rid.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_id)
        # Not reset when an exception escapes: the handler that logs it (ServerErrorMiddleware,
        # outside this one) still tags its line with the id. Each request has its own task.
        request_id_var.reset(token)


def max_body_bytes(settings: Settings) -> int:
    """The largest chat request body accepted before parsing (else 413 CHAT_010)."""
    # Four UTF-8 bytes per character at worst, JSON escaping aside, plus room for options.
    return max(settings.api.ws_max_frame_bytes, settings.chat.max_message_chars * 6 + 16_384)


class BodyLimitMiddleware:
    """Pure ASGI: a JSON API body over the limit is refused with 413 before anything parses it.

    Counts what actually arrives, so a chunked body with no Content-Length is capped too.
    The area's `too_large` class answers; areas without one (uploads, which have their own,
    file-sized limit) are passed through.
    """

    def __init__(self, app: ASGIApp, *, limit: Callable[[Scope], int], area_of: AreaOf) -> None:
        self.app = app
        self.limit = limit
        self.area_of = area_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        area = self.area_of(scope)
        too_large = area.too_large
        if too_large is None:
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").decode("latin-1")
        size = int(declared) if declared.isdigit() else 0
        messages: list[Message] = []
        while size <= limit:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            if not declared:
                size += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        if size > limit:
            rid = str(scope.get("state", {}).get("request_id") or "")
            error = too_large(
                f"The request body is over the limit of {limit} bytes.",
                details={"limit": limit},
                hint="Send a shorter message.",
            )
            count_error(scope, error.error_code, area.name)
            response = JSONResponse(area.body(error, rid), status_code=error.status_code)
            await response(scope, receive, send)
            return
        replay = iter(messages)

        async def buffered() -> Message:
            return next(replay, None) or await receive()

        await self.app(scope, buffered, send)


def allowed_methods(app: Any, scope: Scope) -> list[str]:
    """Every method some route of this path answers (the `Allow` of a 405), sorted."""
    methods: set[str] = set()
    probe = {**scope, "method": "\x00"}  # matches no route fully: each path match is PARTIAL

    def walk(routes: list[Any]) -> None:
        for route in routes:
            included = getattr(route, "original_router", None)  # FastAPI's include_router
            if included is not None:
                walk(included.routes)
                continue
            match, _ = route.matches(probe)
            if match is not Match.NONE:
                methods.update(getattr(route, "methods", None) or ())

    walk(getattr(getattr(app, "router", None), "routes", []))
    return sorted(methods)


def install_error_handlers(app: FastAPI, *, area_of: AreaOf) -> None:
    """Map StudyRAGError, validation errors and anything unexpected to the one shape."""

    def respond(
        request: Request,
        error: StudyRAGError,
        headers: dict[str, str] | None = None,
        *,
        logged: bool = False,
    ) -> JSONResponse:
        area = area_of(request.scope)
        count_error(request.scope, error.error_code, area.name)
        rid = request_id_of(request)
        if error.status_code >= 500 and not logged:
            # Every 5xx is in the log with the request id its client was given.
            log.error(
                "%s %s answered %d %s (request %s): %s",
                request.method,
                request.url.path,
                error.status_code,
                error.error_code,
                rid,
                error.message,
            )
        # Also set here: an unexpected error is answered outside RequestIdMiddleware and
        # SecurityHeadersMiddleware (by Starlette's ServerErrorMiddleware).
        headers = {**(headers or {}), "X-Request-ID": rid} if rid else dict(headers or {})
        response = JSONResponse(
            area.body(error, rid), status_code=error.status_code, headers=headers
        )
        add_security_headers(response.headers)
        return response

    @app.exception_handler(StudyRAGError)
    async def _studyrag(request: Request, exc: StudyRAGError) -> JSONResponse:
        headers = {}
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        headers.update(getattr(exc, "headers", None) or {})
        return respond(request, exc, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "field": ".".join(str(x) for x in e.get("loc", ()) if x != "body"),
                "problem": e["msg"],
            }
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"field": "", "problem": "invalid"}
        error = area_of(request.scope).invalid(
            f"Invalid request: {first['field'] or 'body'}: {first['problem']}.",
            details={"errors": errors},
            hint="Fix the listed fields and send the request again.",
        )
        return respond(request, error)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        error: StudyRAGError
        headers = dict(exc.headers or {})
        if exc.status_code == RouteNotFound.status_code:
            error = RouteNotFound(message)
        elif exc.status_code == MethodNotAllowed.status_code:
            allow = allowed_methods(request.app, request.scope)
            if allow:
                headers["Allow"] = ", ".join(allow)
            error = MethodNotAllowed(message, details={"allow": allow})
        else:
            error = HTTPError(message, status_code=exc.status_code)
        return respond(request, error, headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged with the traceback; the client sees no internals.
        log.exception(
            "unhandled error on %s %s (request %s)",
            request.method,
            request.url.path,
            request_id_of(request),
        )
        error = StudyRAGError(
            "Internal server error; the request id identifies it in the server log.",
            hint="Try again; if it keeps failing, report the request id to the operator.",
        )
        return respond(request, error, logged=True)
