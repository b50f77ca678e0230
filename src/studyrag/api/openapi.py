"""What the OpenAPI schema says a route may answer besides its success: the statuses of the
error classes it can raise, each with the error shape (schemas/errors.py; OpenAI's for /v1).

Each area declares the errors every one of its routes can meet (api/main.py, `AreaErrors`:
invalid request, body too large, Host and Origin refusals, internal error); a route adds its
own with `responses=error_responses(NotebookNotFound, ...)`. tests/api/test_openapi_errors.py
and the schemathesis run check that what routes answer is declared.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from studyrag.errors import StudyRAGError
from studyrag.schemas.errors import ErrorPublic

Responses = dict[int | str, dict[str, Any]]


def error_responses(
    *errors: type[StudyRAGError], model: type[BaseModel] = ErrorPublic
) -> Responses:
    """The OpenAPI `responses` of these error classes: one entry per status, listing codes."""
    codes: dict[int, list[str]] = {}
    for error in errors:
        listed = codes.setdefault(error.status_code, [])
        if error.error_code not in listed:
            listed.append(error.error_code)
    return {
        status: {"model": model, "description": "Error: " + ", ".join(sorted(names))}
        for status, names in sorted(codes.items())
    }


def event_stream(description: str, *, json_too: bool = False) -> Responses:
    """The OpenAPI `responses` of a route that answers with Server-Sent Events (200).

    Declared on every streaming route: a reverse proxy must not buffer them, and
    tests/unit/test_deploy.py finds them by this content type to check deploy/nginx.conf."""
    content: dict[str, Any] = {"text/event-stream": {}}
    if json_too:
        content = {"application/json": {}, **content}
    return {200: {"content": content, "description": description}}


def merge(*parts: Responses) -> Responses:
    """Several `responses` in one; the codes of a status shared by two are listed together."""
    merged: Responses = {}
    for part in parts:
        for status, entry in part.items():
            before, after = merged.get(status, {}), entry
            codes = {*_codes(before), *_codes(after)}
            merged[status] = {**before, **after}
            if codes:
                merged[status]["description"] = "Error: " + ", ".join(sorted(codes))
    return merged


def _codes(entry: dict[str, Any]) -> list[str]:
    description = str(entry.get("description", ""))
    if not description.startswith("Error: "):
        return []
    return description.removeprefix("Error: ").split(", ")
