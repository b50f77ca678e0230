"""The one error shape as the OpenAPI schema declares it (bodies are built by errors.py)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorPublic(BaseModel):
    """{"error_code", "message", "details", "request_id"}: every error of the house API."""

    error_code: str = Field(examples=["DOC_004"])
    message: str
    # Always an object; `hint` (what to do next) is one of its keys when the error has one.
    details: dict[str, Any]
    request_id: str | None
