"""Every router of the API, combined in one place: app.py includes `api_router`.

Each router comes with its area's error classes, so a request refused before its route runs
(invalid, too large) gets the code of the area it was meant for: CHAT_006, SEARCH_002 or
DOC_006; CHAT_010 or REQUEST_002. A new area adds one line to AREAS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from starlette.routing import Match, Route, WebSocketRoute
from starlette.types import Scope

from studyrag.api.errors import NO_AREA, AreaErrors
from studyrag.api.generations import CHAT_AREA
from studyrag.api.routes import (
    auth,
    chat,
    chunks,
    config,
    documents,
    health,
    jobs,
    metrics,
    models,
    notebook_archive,
    notebook_ws,
    notebooks,
    openai,
    search,
    shares,
    sse,
    web,
    ws,
)
from studyrag.errors import (
    InvalidAuthRequest,
    InvalidChatRequest,
    InvalidDocumentRequest,
    InvalidNotebook,
    InvalidSearchRequest,
    InvalidSetting,
    PayloadTooLarge,
)
from studyrag.schemas.openai import openai_error_body

CHAT_ERRORS = AreaErrors(invalid=InvalidChatRequest, too_large=PayloadTooLarge, name=CHAT_AREA)
DOCUMENT_ERRORS = AreaErrors(invalid=InvalidDocumentRequest, too_large=None, name="documents")

AREAS: tuple[tuple[APIRouter, AreaErrors], ...] = (
    (health.router, AreaErrors(name="health")),
    (metrics.router, AreaErrors(name="metrics")),
    (notebooks.router, AreaErrors(invalid=InvalidNotebook, name="notebooks")),
    # Uploads have their own, file-sized limit.
    (notebooks.upload_router, DOCUMENT_ERRORS),
    # Imports too: an archive is limited while it is stored (STUDYRAG_ARCHIVE__MAX_ARCHIVE_MB).
    (
        notebook_archive.router,
        AreaErrors(invalid=InvalidNotebook, too_large=None, name="notebooks"),
    ),
    (documents.router, DOCUMENT_ERRORS),
    (chunks.router, AreaErrors(invalid=InvalidDocumentRequest, name="documents")),
    (jobs.router, AreaErrors(name="jobs")),
    (notebook_ws.router, AreaErrors(name="notebooks")),
    (search.router, AreaErrors(invalid=InvalidSearchRequest, name="search")),
    (chat.router, CHAT_ERRORS),
    (sse.router, CHAT_ERRORS),
    (ws.router, CHAT_ERRORS),
    # The one area whose errors take another shape: OpenAI's {"error": {...}}.
    (
        openai.router,
        AreaErrors(
            invalid=InvalidChatRequest,
            too_large=PayloadTooLarge,
            name="openai",
            body=openai_error_body,
        ),
    ),
    (web.router, NO_AREA),
    (config.router, AreaErrors(invalid=InvalidSetting, name="config")),
    (models.router, AreaErrors(invalid=InvalidSetting, name="models")),
    (auth.router, AreaErrors(invalid=InvalidAuthRequest, name="auth")),
    (shares.router, AreaErrors(invalid=InvalidAuthRequest, name="notebooks")),
)

api_router = APIRouter()
_AREA_OF_ENDPOINT: dict[Callable[..., Any], AreaErrors] = {}
for _router, _errors in AREAS:
    api_router.include_router(_router)
    for _route in _router.routes:
        if isinstance(_route, Route | WebSocketRoute):
            _AREA_OF_ENDPOINT[_route.endpoint] = _errors


def area_of(scope: Scope) -> AreaErrors:
    """The error classes of the area whose route serves (or would serve) this request."""
    endpoint = scope.get("endpoint")
    if endpoint is None:  # not routed yet: the body limit runs before routing
        endpoint = _match(scope)
    return _AREA_OF_ENDPOINT.get(endpoint, NO_AREA) if endpoint is not None else NO_AREA


def _match(scope: Scope) -> Callable[..., Any] | None:
    """The endpoint of the route for this path, for this method or (failing that) another."""
    # The areas' own routers, not api_router: they hold the routes with their full paths
    # (api_router adds no prefix), whatever the framework keeps for included routers.
    partial = None
    for router, _ in AREAS:
        for route in router.routes:
            match, child = route.matches(scope)
            if match is Match.FULL:
                return child.get("endpoint")
            if match is Match.PARTIAL and partial is None:
                partial = child.get("endpoint")
    return partial
