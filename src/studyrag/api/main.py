"""Every router of the API, combined in one place: app.py includes `api_router`.

Each router comes with its area's error classes, so a request refused before its route runs
(invalid, too large) gets the code of the area it was meant for: CHAT_006, SEARCH_002 or
DOC_006; CHAT_010 or REQUEST_002. A new area adds one line to AREAS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute
from starlette.routing import Match, Route, WebSocketRoute
from starlette.types import Scope

from studyrag.api.errors import NO_AREA, AreaErrors
from studyrag.api.generations import CHAT_AREA
from studyrag.api.openapi import merge
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
    AmbiguousId,
    AmbiguousNotebook,
    ArchiveInvalid,
    ArchiveTooLarge,
    BackendUnavailable,
    BrokerUnavailable,
    ChunkNotFound,
    ContextTooLong,
    ConversationNotFound,
    DiskFull,
    DocumentBusy,
    DocumentNotFound,
    EmptyLibrary,
    EmptyQuery,
    FileTooLarge,
    GenerationFailed,
    GenerationInProgress,
    HighlightUnavailable,
    InvalidAuthRequest,
    InvalidChatRequest,
    InvalidDocumentRequest,
    InvalidNotebook,
    InvalidSearchRequest,
    InvalidSetting,
    InvalidSpan,
    JobConflict,
    JobNotFound,
    KeyNotFound,
    LLMUnavailable,
    LoginFailed,
    LoginThrottled,
    MessageNotFound,
    ModelNotFound,
    ModelSwitchInProgress,
    NotebookBusy,
    NotebookExists,
    NotebookNotFound,
    OriginalMissing,
    PageNotFound,
    PayloadTooLarge,
    RangeNotSatisfiable,
    RateLimited,
    SettingNotChangeable,
    SetupUnavailable,
    StorageFull,
    StorageQuotaExceeded,
    TooManyConnections,
    Unauthorized,
    UnknownModel,
    UnknownSetting,
    UnsupportedFileType,
    UploadsPerDayExceeded,
    UserExists,
    UserNotFound,
)
from studyrag.schemas.openai import OpenAIErrorPublic, openai_error_body

# What the services behind each area can refuse a request with (the OpenAPI schema's
# responses; the schemathesis run in tests/api/test_schema_fuzz.py holds them to it).
_NOTEBOOK = (
    NotebookNotFound,
    NotebookExists,
    NotebookBusy,
    AmbiguousId,
    AmbiguousNotebook,
    JobConflict,
    StorageFull,
)
_DOCUMENT = (
    DocumentNotFound,
    DocumentBusy,
    NotebookNotFound,
    NotebookBusy,
    AmbiguousId,
    AmbiguousNotebook,
    JobConflict,
    FileTooLarge,
    DiskFull,
    UnsupportedFileType,
    InvalidSpan,
    OriginalMissing,
    PageNotFound,
    RangeNotSatisfiable,
    HighlightUnavailable,
    ChunkNotFound,
    # Upload quotas (auth/quotas.py), and their shared count out of reach.
    UploadsPerDayExceeded,
    StorageQuotaExceeded,
    BrokerUnavailable,
    StorageFull,
)
_CHAT = (
    ConversationNotFound,
    MessageNotFound,
    NotebookNotFound,
    DocumentNotFound,
    AmbiguousId,
    AmbiguousNotebook,
    GenerationInProgress,
    RateLimited,
    TooManyConnections,
    LLMUnavailable,
    ModelNotFound,
    ContextTooLong,
    GenerationFailed,
    BrokerUnavailable,
    BackendUnavailable,
    StorageFull,
)
_SEARCH = (
    EmptyQuery,
    EmptyLibrary,
    BackendUnavailable,
    NotebookNotFound,
    AmbiguousNotebook,
    DocumentNotFound,
)
_AUTH = (
    LoginFailed,
    LoginThrottled,
    SetupUnavailable,
    UserExists,
    UserNotFound,
    KeyNotFound,
    BrokerUnavailable,  # the shared login count is out of reach
)
_ADMIN = (
    UnknownSetting,
    SettingNotChangeable,
    UnknownModel,
    ModelSwitchInProgress,
    JobConflict,
    LLMUnavailable,  # Ollama not reachable for a pull
)

CHAT_ERRORS = AreaErrors(
    invalid=InvalidChatRequest, too_large=PayloadTooLarge, name=CHAT_AREA, raises=_CHAT
)
DOCUMENT_ERRORS = AreaErrors(
    invalid=InvalidDocumentRequest, too_large=None, name="documents", raises=_DOCUMENT
)

AREAS: tuple[tuple[APIRouter, AreaErrors], ...] = (
    (health.router, AreaErrors(name="health")),
    (metrics.router, AreaErrors(name="metrics")),
    (notebooks.router, AreaErrors(invalid=InvalidNotebook, name="notebooks", raises=_NOTEBOOK)),
    # Uploads have their own, file-sized limit.
    (notebooks.upload_router, DOCUMENT_ERRORS),
    # Imports too: an archive is limited while it is stored (STUDYRAG_ARCHIVE__MAX_ARCHIVE_MB).
    (
        notebook_archive.router,
        AreaErrors(
            invalid=InvalidNotebook,
            too_large=None,
            name="notebooks",
            raises=(*_NOTEBOOK, ArchiveInvalid, ArchiveTooLarge),
        ),
    ),
    (documents.router, DOCUMENT_ERRORS),
    (chunks.router, AreaErrors(invalid=InvalidDocumentRequest, name="documents", raises=_DOCUMENT)),
    (jobs.router, AreaErrors(name="jobs", raises=(JobNotFound, JobConflict, AmbiguousId))),
    (notebook_ws.router, AreaErrors(name="notebooks")),
    (search.router, AreaErrors(invalid=InvalidSearchRequest, name="search", raises=_SEARCH)),
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
            schema=OpenAIErrorPublic,
            raises=(*_CHAT, Unauthorized),
        ),
    ),
    (web.router, NO_AREA),
    (config.router, AreaErrors(invalid=InvalidSetting, name="config", raises=_ADMIN)),
    (models.router, AreaErrors(invalid=InvalidSetting, name="models", raises=_ADMIN)),
    (auth.router, AreaErrors(invalid=InvalidAuthRequest, name="auth", raises=_AUTH)),
    (
        shares.router,
        AreaErrors(invalid=InvalidAuthRequest, name="notebooks", raises=(*_NOTEBOOK, UserNotFound)),
    ),
)

api_router = APIRouter()
_AREA_OF_ENDPOINT: dict[Callable[..., Any], AreaErrors] = {}
for _router, _errors in AREAS:
    for _route in _router.routes:
        if isinstance(_route, APIRoute):
            # Read by include_router below, which builds the routes the schema describes.
            _route.responses = merge(_errors.responses(), _route.responses)
    api_router.include_router(_router)
    for _route in _router.routes:
        if isinstance(_route, Route | WebSocketRoute):
            _AREA_OF_ENDPOINT[_route.endpoint] = _errors


def area_of(scope: Scope) -> AreaErrors:
    """The error classes of the area whose route serves (or would serve) this request."""
    endpoint = scope.get("endpoint")
    if endpoint is None:  # not routed yet: the body limit runs before routing
        endpoint = _match(scope)
    if endpoint is not None:
        return _AREA_OF_ENDPOINT.get(endpoint, NO_AREA)
    # A path no route matches (a 404) is no area's (the metrics say "none"), but under an
    # area's prefix it is answered in that area's shape: /v1/models/<a name with a newline>
    # gets OpenAI's error body, as its schema says.
    path = str(scope.get("path", ""))
    under = [(r.prefix, e) for r, e in AREAS if r.prefix and path.startswith(r.prefix + "/")]
    if not under:
        return NO_AREA
    _, errors = max(under, key=lambda pair: len(pair[0]))
    return replace(NO_AREA, body=errors.body, schema=errors.schema)


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
