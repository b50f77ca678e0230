"""One error shape for every HTTP response, plus the request-id ASGI middleware."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from studyrag.config import Settings
from studyrag.errors import RateLimited, StudyRAGError

log = logging.getLogger(__name__)

_VALIDATION_CODES = {
    "/api/chat": "CHAT_006",
    "/api/search": "SEARCH_002",
    "/api/documents": "DOC_006",
}


def request_id_of(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id") or "")


def error_body(
    code: str, message: str, request_id: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "error_code": code,
        "message": message,
        "details": details or {},
        "request_id": request_id,
    }


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

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)


def max_body_bytes(settings: Settings) -> int:
    """The largest chat request body accepted before parsing (else 413 CHAT_010)."""
    # Four UTF-8 bytes per character at worst, JSON escaping aside, plus room for options.
    return max(settings.api.ws_max_frame_bytes, settings.chat.max_message_chars * 6 + 16_384)


class BodyLimitMiddleware:
    """Pure ASGI: a JSON API body over the limit is refused with 413 before anything parses it.

    Counts what actually arrives, so a chunked body with no Content-Length is capped too.
    Uploads (/api/documents) have their own, file-sized limit and are passed through.
    """

    def __init__(self, app: ASGIApp, *, limit: Callable[[Scope], int]) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in ("POST", "PUT", "PATCH")
            or scope["path"].startswith("/api/documents")
        ):
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
            response = JSONResponse(
                error_body(
                    "CHAT_010" if scope["path"].startswith("/api/chat") else "REQUEST_002",
                    f"The request body is over the limit of {limit} bytes.",
                    rid,
                    {"limit": limit, "hint": "Send a shorter message."},
                ),
                status_code=413,
            )
            await response(scope, receive, send)
            return
        replay = iter(messages)

        async def buffered() -> Message:
            return next(replay, None) or await receive()

        await self.app(scope, buffered, send)


def install_error_handlers(app: FastAPI) -> None:
    """Map StudyRAGError, validation errors and anything unexpected to the one shape."""

    @app.exception_handler(StudyRAGError)
    async def _studyrag(request: Request, exc: StudyRAGError) -> JSONResponse:
        headers = {}
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        return JSONResponse(
            exc.to_dict(request_id_of(request)), status_code=exc.status_code, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        code = next(
            (c for p, c in _VALIDATION_CODES.items() if request.url.path.startswith(p)),
            "REQUEST_001",
        )
        errors = [
            {
                "field": ".".join(str(x) for x in e.get("loc", ()) if x != "body"),
                "problem": e["msg"],
            }
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"field": "", "problem": "invalid"}
        return JSONResponse(
            error_body(
                code,
                f"Invalid request: {first['field'] or 'body'}: {first['problem']}.",
                request_id_of(request),
                {"errors": errors, "hint": "Fix the listed fields and send the request again."},
            ),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
        return JSONResponse(
            error_body(code, str(exc.detail), request_id_of(request)),
            status_code=exc.status_code,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged with the traceback; the client sees no internals.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body(
                "GEN_001",
                "Internal server error; the request id identifies it in the server log.",
                request_id_of(request),
            ),
            status_code=500,
        )
