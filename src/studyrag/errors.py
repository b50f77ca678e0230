"""The StudyRAGError tree: each class carries its error_code, HTTP status and a hint."""

from __future__ import annotations

from typing import Any


class StudyRAGError(Exception):
    """Base of every error a user can see; rendered as one JSON shape everywhere."""

    error_code = "GEN_001"
    status_code = 500
    default_hint = ""

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = dict(details or {})
        self.hint = hint if hint is not None else self.default_hint

    def to_dict(self, request_id: str | None = None) -> dict[str, Any]:
        """The one error shape: error_code, message, details, request_id."""
        details = dict(self.details)
        if self.hint:
            details.setdefault("hint", self.hint)
        return {
            "error_code": self.error_code,
            "message": self.message,
            "details": details,
            "request_id": request_id,
        }


class StorageFull(StudyRAGError):
    """The database could not write for lack of space (SQLite's disk, PostgreSQL's
    `disk_full`); its transaction was rolled back, so nothing of the request was stored."""

    error_code = "GEN_002"
    status_code = 507
    default_hint = (
        "The disk that holds the database is full: free space on it (or move the data "
        "directory to a larger disk with STUDYRAG_DATA_DIR), then try again; nothing of this "
        "request was stored."
    )


# --- configuration -----------------------------------------------------------------------
class ConfigError(StudyRAGError):
    error_code = "CONFIG_001"
    status_code = 500


class MissingExtraError(ConfigError):
    error_code = "CONFIG_002"

    def __init__(self, feature: str, extra: str) -> None:
        super().__init__(
            f"{feature} needs an optional dependency that is not installed.",
            hint=f"Install it with: pip install 'studyrag[{extra}]'",
            details={"extra": extra},
        )


class UnknownSetting(ConfigError):
    """A configuration change names a setting that does not exist."""

    error_code = "CONFIG_003"
    status_code = 422
    default_hint = "List the settings with GET /api/config or `studyrag config show`."


class InvalidSetting(ConfigError):
    """A configuration change whose value the Settings model refuses."""

    error_code = "CONFIG_004"
    status_code = 422


class SettingNotChangeable(ConfigError):
    """A setting this request may not change: it needs a restart, or a model switch."""

    error_code = "CONFIG_005"
    status_code = 409


class UnknownModel(ConfigError):
    """A model name no provider knows, or one that is not available right now."""

    error_code = "CONFIG_006"
    status_code = 404
    default_hint = "List the models with GET /api/models or `studyrag models list`."


class ModelSwitchInProgress(ConfigError):
    """An embedding-model switch is running; another switch must wait for it."""

    error_code = "CONFIG_007"
    status_code = 409
    default_hint = "Follow its job (GET /api/jobs/{id}/events) and switch again when it ends."


# --- documents ---------------------------------------------------------------------------
class DocumentError(StudyRAGError):
    error_code = "DOC_000"
    status_code = 400


class UnsupportedFileType(DocumentError):
    error_code = "DOC_001"
    status_code = 415
    default_hint = (
        "Supported types: .pdf, .docx, .html/.htm, .txt, .md/.markdown, .png, .jpg/.jpeg."
    )


class FileTooLarge(DocumentError):
    error_code = "DOC_002"
    status_code = 413
    default_hint = "Split the file, or raise STUDYRAG_INGEST__MAX_FILE_SIZE_MB."


class ExtractionFailed(DocumentError):
    error_code = "DOC_003"
    status_code = 422
    default_hint = "Check that the file opens in its usual program and is not encrypted."


class DocumentNotFound(DocumentError):
    error_code = "DOC_004"
    status_code = 404
    default_hint = "List documents with `studyrag documents list` or GET /api/documents."


class IngestionFailed(DocumentError):
    error_code = "DOC_005"
    status_code = 500
    default_hint = "Run the ingestion again; the document was rolled back."


class InvalidDocumentRequest(DocumentError):
    """A documents request whose body or query fails validation."""

    error_code = "DOC_006"
    status_code = 422


class DocumentBusy(DocumentError):
    error_code = "DOC_007"
    status_code = 409
    default_hint = "Wait until its ingestion finishes (GET /api/documents/{id}), then try again."


class DiskFull(DocumentError):
    """The disk under the data directory ran out of space (or quota) while a file was
    stored; the partial copy is removed and nothing of it was recorded."""

    error_code = "DOC_015"
    status_code = 507
    default_hint = (
        "The disk that holds the data directory is full: free space on it (or move the "
        "data directory to a larger disk with STUDYRAG_DATA_DIR), then upload the file again."
    )


class FileUnpacksTooLarge(DocumentError):
    """A zip-based document (DOCX) that inflates past the size or ratio caps: a zip bomb."""

    error_code = "DOC_014"
    status_code = 413
    default_hint = (
        "Save the document again in its program (or split it); the caps are "
        "STUDYRAG_INGEST__MAX_UNPACKED_MB and STUDYRAG_INGEST__MAX_UNPACK_RATIO."
    )


# --- search ------------------------------------------------------------------------------
class SearchError(StudyRAGError):
    error_code = "SEARCH_000"
    status_code = 400


class EmptyQuery(SearchError):
    error_code = "SEARCH_001"
    status_code = 400
    default_hint = "Type a few words to search for."


class InvalidSearchRequest(SearchError):
    error_code = "SEARCH_002"
    status_code = 422


class BackendUnavailable(SearchError):
    """The embedder or the vector store cannot be reached."""

    error_code = "SEARCH_003"
    status_code = 503


class EmptyLibrary(SearchError):
    """Nothing is searchable yet: no document has finished ingesting."""

    error_code = "SEARCH_004"
    status_code = 404
    default_hint = "Add documents with `studyrag ingest PATH` or POST /api/documents."


# --- chat --------------------------------------------------------------------------------
class ChatError(StudyRAGError):
    error_code = "CHAT_000"
    status_code = 500


class LLMUnavailable(ChatError):
    error_code = "CHAT_001"
    status_code = 503


class ModelNotFound(ChatError):
    error_code = "CHAT_002"
    status_code = 503


class ContextTooLong(ChatError):
    error_code = "CHAT_003"
    status_code = 413


class GenerationFailed(ChatError):
    error_code = "CHAT_004"
    status_code = 502


class ConversationNotFound(ChatError):
    error_code = "CHAT_005"
    status_code = 404
    default_hint = "List conversations with GET /api/chat/conversations or start a new one."


class InvalidChatRequest(ChatError):
    error_code = "CHAT_006"
    status_code = 422


class GenerationInProgress(ChatError):
    error_code = "CHAT_007"
    status_code = 409
    default_hint = "Wait for the current answer, attach to its stream, or stop it first."


class MessageNotFound(ChatError):
    error_code = "CHAT_008"
    status_code = 404


class InvalidFrame(ChatError):
    """A WebSocket frame that is not valid JSON, has an unknown type or is too large."""

    error_code = "CHAT_009"
    status_code = 400


class PayloadTooLarge(ChatError):
    error_code = "CHAT_010"
    status_code = 413


class BrokerUnavailable(ChatError):
    """The pub/sub broker that fans answers out to WebSocket clients cannot be reached."""

    error_code = "CHAT_011"
    status_code = 503
    default_hint = "Start Redis, or leave STUDYRAG_BROKER__URL empty for a single worker."


class AnswerLost(ChatError):
    """The worker generating an answer stopped (killed, or shut down) before it ended."""

    error_code = "CHAT_012"
    status_code = 503
    default_hint = (
        "The text streamed so far is stored as incomplete; send the message again "
        "(any worker answers it)."
    )


# --- requests, before any area's own checks ----------------------------------------------
class InvalidRequest(StudyRAGError):
    """A body or query that fails validation, outside any area with its own code."""

    error_code = "REQUEST_001"
    status_code = 422


class RequestTooLarge(StudyRAGError):
    """A JSON body over the size limit, outside the chat API (which answers CHAT_010)."""

    error_code = "REQUEST_002"
    status_code = 413


class AmbiguousId(StudyRAGError):
    """An id prefix that matches several documents or conversations."""

    error_code = "REQUEST_003"
    status_code = 400
    default_hint = "Give more characters of the id."

    def __init__(self, kind: str, prefix: str, candidates: list[tuple[str, str]]) -> None:
        listed = "; ".join(f"{cid} ({label})" for cid, label in candidates)
        super().__init__(
            f"Several {kind}s have ids starting with {prefix!r}: {listed}.",
            details={
                "prefix": prefix,
                "candidates": [{"id": cid, "name": label} for cid, label in candidates],
            },
        )


class RouteNotFound(StudyRAGError):
    """No route serves this path."""

    error_code = "NOT_FOUND"
    status_code = 404


class HostNotAllowed(StudyRAGError):
    """A Host header that names none of the server's names (DNS rebinding)."""

    error_code = "REQUEST_004"
    status_code = 421
    default_hint = (
        "Use the address the server is bound to, or add this name to api.allowed_hosts "
        "(STUDYRAG_API__ALLOWED_HOSTS) when a reverse proxy forwards it."
    )


class OriginNotAllowed(StudyRAGError):
    """A cross-site browser request that changes state, or a cross-site WebSocket."""

    error_code = "REQUEST_005"
    status_code = 403
    default_hint = (
        "Send the request from the server's own pages, or add the page's origin to "
        "api.allowed_origins (STUDYRAG_API__ALLOWED_ORIGINS)."
    )


class MethodNotAllowed(StudyRAGError):
    """The path exists, but not for this HTTP method."""

    error_code = "METHOD_NOT_ALLOWED"
    status_code = 405
    default_hint = "Use one of the methods listed in the Allow header."


class HTTPError(StudyRAGError):
    """Any other HTTP error the framework raises; it keeps the framework's status."""

    error_code = "HTTP_ERROR"
    status_code = 400

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


# --- authentication ----------------------------------------------------------------------
class Unauthorized(StudyRAGError):
    """No valid credentials: none sent, or an unknown, expired or revoked key or session
    (multi-user mode), or /v1 without STUDYRAG_API__KEY when one is set (local mode)."""

    error_code = "AUTH_001"
    status_code = 401
    default_hint = (
        "Log in (POST /api/auth/login) or send `Authorization: Bearer <key>`; "
        "an admin makes keys with `studyrag keys create --user NAME`."
    )
    headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(StudyRAGError):
    """Authenticated, but the key's scopes or the user's role do not cover this request."""

    error_code = "AUTH_002"
    status_code = 403
    default_hint = "Use a key with the scope named in details, or ask an admin."


class LoginFailed(StudyRAGError):
    """A wrong user name or password, or a disabled account (never says which)."""

    error_code = "AUTH_003"
    status_code = 401
    default_hint = "Check the name and password; an admin can run `studyrag users reset-password`."


class UserExists(StudyRAGError):
    error_code = "AUTH_004"
    status_code = 409
    default_hint = "Choose another name; `studyrag users list` shows the taken ones."


class UserNotFound(StudyRAGError):
    error_code = "AUTH_005"
    status_code = 404
    default_hint = "List users with `studyrag users list`."


class CsrfRejected(StudyRAGError):
    """A cookie-authenticated change without the browser's same-origin proof."""

    error_code = "AUTH_006"
    status_code = 403
    default_hint = (
        "Send the request from the StudyRAG page itself (browsers add Origin), or use an API key."
    )


class SetupUnavailable(StudyRAGError):
    """The first-admin setup link is used up, wrong, or the server already has users."""

    error_code = "AUTH_007"
    status_code = 403
    default_hint = "Log in instead, or create users with `studyrag users create NAME`."


class InvalidAuthRequest(StudyRAGError):
    """A user name, password, scope, role or expiry the server does not accept."""

    error_code = "AUTH_008"
    status_code = 422


class KeyNotFound(StudyRAGError):
    error_code = "AUTH_009"
    status_code = 404
    default_hint = "List keys with `studyrag keys list`."


# --- limits ------------------------------------------------------------------------------
class RateLimited(StudyRAGError):
    error_code = "RATE_001"
    status_code = 429

    def __init__(self, retry_after: float, *, limit: int) -> None:
        super().__init__(
            f"Too many messages: at most {limit} per minute.",
            details={"retry_after": round(retry_after, 1), "limit": limit},
            hint=f"Wait {max(1, round(retry_after))} s and send again.",
        )
        self.retry_after = retry_after


class TooManyConnections(StudyRAGError):
    error_code = "RATE_002"
    status_code = 429


class LoginThrottled(RateLimited):
    """Too many login (or setup) attempts from one address: password guessing is slowed."""

    error_code = "RATE_003"

    def __init__(self, retry_after: float, *, limit: int, minutes: int) -> None:
        StudyRAGError.__init__(
            self,
            f"Too many login attempts from this address: at most {limit} in {minutes} minutes.",
            details={"retry_after": round(retry_after, 1), "limit": limit},
            hint=f"Wait {max(1, round(retry_after))} s, then log in again.",
        )
        self.retry_after = retry_after


class UploadsPerDayExceeded(RateLimited, DocumentError):
    """A user's files for the day are used up (`api.uploads_per_day`, a sliding 24 hours).

    Also a DocumentError: a file of a multi-file upload refused by it is reported
    `rejected` like a file too large, and the files before it are kept."""

    error_code = "RATE_004"
    status_code = 429

    def __init__(self, retry_after: float, *, limit: int, filename: str | None = None) -> None:
        details: dict[str, Any] = {"retry_after": round(retry_after, 1), "limit": limit}
        if filename is not None:
            details["filename"] = filename
        StudyRAGError.__init__(
            self,
            f"Upload limit reached: at most {limit} files per user in 24 hours.",
            details=details,
            hint=f"Wait {_duration(retry_after)} and upload again, or ask an admin to raise "
            "STUDYRAG_API__UPLOADS_PER_DAY.",
        )
        self.retry_after = retry_after


class StorageQuotaExceeded(DocumentError):
    """The originals in a user's notebooks would pass `api.storage_quota_mb`.

    413, not 507 (DOC_015, the server's disk is full): this request is too large for what
    the notebook's owner has left, and a smaller one, or a delete first, succeeds."""

    error_code = "RATE_005"
    status_code = 413

    def __init__(
        self, *, used: int, limit: int, incoming: int | None = None, filename: str | None = None
    ) -> None:
        details: dict[str, Any] = {"used_bytes": used, "limit_bytes": limit}
        if incoming is not None:
            details["upload_bytes"] = incoming
        if filename is not None:
            details["filename"] = filename
        StudyRAGError.__init__(
            self,
            f"Storage quota reached: the notebook's owner keeps {used / 1e6:.1f} MB of "
            f"originals of at most {limit / 1e6:.1f} MB.",
            details=details,
            hint="Delete documents you no longer need (DELETE /api/documents/{id}), or ask "
            "an admin to raise STUDYRAG_API__STORAGE_QUOTA_MB.",
        )


def _duration(seconds: float) -> str:
    """A wait as a person reads it: 42 s, 17 min, 3 h."""
    if seconds < 120:
        return f"{max(1, round(seconds))} s"
    if seconds < 7200:
        return f"{round(seconds / 60)} min"
    return f"{round(seconds / 3600)} h"


# --- notebooks, originals and jobs -------------------------------------------------------
class NotebookError(StudyRAGError):
    error_code = "NB_000"
    status_code = 400


class NotebookNotFound(NotebookError):
    error_code = "NB_001"
    status_code = 404
    default_hint = "List notebooks with `studyrag notebooks list` or GET /api/notebooks."


class NotebookExists(NotebookError):
    error_code = "NB_002"
    status_code = 409
    default_hint = "Choose another name, or rename the existing notebook first."


class InvalidNotebook(NotebookError):
    error_code = "NB_003"
    status_code = 422


class NotebookBusy(NotebookError):
    error_code = "NB_004"
    status_code = 409


class AmbiguousNotebook(NotebookError):
    """A name several notebooks the caller sees carry (none of them its own): names are
    unique per owner only."""

    error_code = "NB_011"
    status_code = 400
    default_hint = "Name the notebook by its id (`studyrag notebooks list` shows them)."

    def __init__(self, name: str, candidates: list[tuple[str, str, str | None]]) -> None:
        listed = "; ".join(f"{nid} (of {owner or 'another user'})" for nid, _, owner in candidates)
        super().__init__(
            f"Several notebooks you can see are named {name!r}, none of them yours: {listed}.",
            details={
                "name": name,
                "candidates": [
                    {"id": nid, "name": label, "owner": owner} for nid, label, owner in candidates
                ],
            },
        )


class InvalidSpan(DocumentError):
    """Offsets that do not lie inside the document's text."""

    error_code = "DOC_009"
    status_code = 422
    default_hint = "Give 0 <= start < end <= the document's text length (see GET /api/chunks/{id})."


class ChunkNotFound(DocumentError):
    error_code = "DOC_012"
    status_code = 404
    default_hint = "Chunk ids come from search results and answer sources."


class RangeNotSatisfiable(DocumentError):
    error_code = "DOC_010"
    status_code = 416


class OriginalMissing(DocumentError):
    """The original file is not kept (ingested before originals were kept, or removed)."""

    error_code = "DOC_011"
    status_code = 404
    default_hint = "Upload the file again to keep its original and view its pages."


class PageNotFound(DocumentError):
    error_code = "DOC_008"
    status_code = 404
    default_hint = "Pages are numbered from 1 to the document's metadata.page_count."


class HighlightUnavailable(DocumentError):
    """The kept PDF no longer gives the stored text, so a passage cannot be placed on it."""

    error_code = "DOC_013"
    status_code = 409
    default_hint = "Delete the document and upload it again: its text then comes from this loader."


class JobError(StudyRAGError):
    error_code = "JOB_000"
    status_code = 400


class JobNotFound(JobError):
    error_code = "JOB_001"
    status_code = 404


class JobConflict(JobError):
    """The job or document is in a state that does not allow this (e.g. retry a completed)."""

    error_code = "JOB_002"
    status_code = 409


class JobQueueUnavailable(JobError):
    """The job queue (procrastinate's tables in PostgreSQL) did not take the job."""

    error_code = "JOB_003"
    status_code = 503
    default_hint = (
        "Check that PostgreSQL (STUDYRAG_DATABASE__URL) is reachable; the job is kept and "
        "queued again when a worker starts."
    )


class Cancelled(StudyRAGError):
    """An ingestion stopped at a step boundary because it was cancelled."""

    error_code = "JOB_003"
    status_code = 409


# --- notebook archives (export / import) -------------------------------------------------
class ArchiveInvalid(NotebookError):
    """Not a StudyRAG notebook archive, or one whose contents do not check out."""

    error_code = "NB_005"
    status_code = 422
    default_hint = (
        "Import a .zip made by `studyrag notebooks export` or GET /api/notebooks/{id}/export."
    )


class ArchiveTruncated(ArchiveInvalid):
    """The archive ends early (an interrupted download or copy)."""

    error_code = "NB_006"
    default_hint = "Export or download the notebook again; the file is incomplete."


class ArchiveVersionUnsupported(ArchiveInvalid):
    error_code = "NB_007"
    default_hint = "Import it with the StudyRAG version that made it, or upgrade this one."


class ArchiveUnsafe(ArchiveInvalid):
    """An entry that would be written outside its place: `..`, an absolute name, a link."""

    error_code = "NB_008"
    default_hint = "Only import archives made by StudyRAG; this one was altered."


class ArchiveTooLarge(ArchiveInvalid):
    """The archive, or what it unpacks to, is over the configured limits (or a zip bomb)."""

    error_code = "NB_009"
    status_code = 413
    default_hint = (
        "Raise STUDYRAG_ARCHIVE__MAX_ARCHIVE_MB / MAX_UNPACKED_MB if the archive is genuine."
    )


class ArchiveBomb(ArchiveTooLarge):
    """An entry that unpacks to far more than it occupies: a decompression bomb."""

    error_code = "NB_010"
    default_hint = "Only import archives made by StudyRAG; this one unpacks to a suspicious size."
