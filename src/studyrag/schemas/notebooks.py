"""Notebooks as the HTTP API and the CLI's --json show them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from studyrag.db.models import Notebook
from studyrag.db.notebooks import NotebookCounts
from studyrag.schemas.base import UTCDateTime

NAME_MAX = 200
DESCRIPTION_MAX = 2000


class NotebookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=NAME_MAX)
    description: str = Field(default="", max_length=DESCRIPTION_MAX)


class NotebookUpdate(BaseModel):
    """PUT /api/notebooks/{id}: only the fields given change."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=NAME_MAX)
    description: str | None = Field(default=None, max_length=DESCRIPTION_MAX)


class NotebookPublic(BaseModel):
    id: str
    name: str
    description: str
    is_default: bool
    documents: int
    documents_completed: int
    conversations: int
    size_bytes: int
    chunks: int
    created_at: UTCDateTime | None = None
    updated_at: UTCDateTime | None = None
    # What the caller may do with it: owner (everything), editor (also add and remove
    # sources), viewer (read, search, chat). Local mode: always owner.
    role: Literal["owner", "editor", "viewer"] = "owner"

    @classmethod
    def from_row(cls, nb: Notebook, counts: NotebookCounts | None = None) -> NotebookPublic:
        c = counts or NotebookCounts()
        return cls(
            id=nb.id,
            name=nb.name,
            description=nb.description or "",
            is_default=bool(nb.is_default),
            documents=c.documents,
            documents_completed=c.documents_completed,
            conversations=c.conversations,
            size_bytes=c.size_bytes,
            chunks=c.chunks,
            created_at=nb.created_at,
            updated_at=nb.updated_at,
        )


class NotebookList(BaseModel):
    items: list[NotebookPublic]
    total: int
    # The notebook the caller's requests that name none use (None: a user who owns none yet;
    # their first such request makes one).
    default_id: str | None = None


class NotebookDeleteAccepted(BaseModel):
    notebook_id: str
    job_id: str
