"""Pure ASGI middleware: each HTTP request's latency into the metrics, and one log line.

Pure ASGI, not BaseHTTPMiddleware: streamed answers (SSE, /v1 streams) pass through
untouched. The latency runs until the response's last byte; the route is the template
(`/api/documents/{document_id}`), never the raw path, so the series stay few.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from studyrag.observability.metrics import UNMATCHED, Metrics

access_log = logging.getLogger("studyrag.access")


def metrics_of(scope: Scope) -> Metrics | None:
    """The running app's metrics registry (None before the app exists)."""
    app = scope.get("app")
    metrics = getattr(getattr(app, "state", None), "metrics", None)
    return metrics if isinstance(metrics, Metrics) else None


def route_template(scope: Scope) -> str:
    """The path template of the route that served the request."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else UNMATCHED


class RequestTelemetryMiddleware:
    """Records `studyrag_http_request_duration_seconds` and logs `studyrag.access` lines."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts: an exception escaped every handler

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            self._record(scope, status, time.perf_counter() - started)

    @staticmethod
    def _record(scope: Scope, status: int, seconds: float) -> None:
        route = route_template(scope)
        method = str(scope.get("method", ""))
        metrics = metrics_of(scope)
        if metrics is not None:
            metrics.http_duration.labels(method=method, route=route, status=str(status)).observe(
                seconds
            )
        client = scope.get("client")
        access_log.info(
            "%s %s %d %.1f ms",
            method,
            scope.get("path", ""),
            status,
            seconds * 1000,
            extra={
                "method": method,
                "route": route,
                "path": scope.get("path", ""),
                "status": status,
                "duration_ms": round(seconds * 1000, 2),
                "client": client[0] if client else None,
            },
        )
