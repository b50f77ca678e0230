"""The notebook archive format (export / import): its manifest and entries, version 1.

One zip file:

    manifest.json              ArchiveManifest (written last; lists every other entry)
    documents/<n>.json         ArchivedDocument: the row, its extracted text and its chunks
    originals/<sha256>         the original file's bytes (one per distinct content)
    vectors/<n>.f32            optional: the chunks' vectors, float32 little-endian, in
                               chunk index order (dimensions given by the manifest)
    conversations/<n>.json     ArchivedConversation with its messages

Every model forbids unknown fields: an archive is checked completely before anything is
imported, and a field this version does not know means a format it does not read.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from studyrag.schemas.base import SQLITE_INT_MAX
from studyrag.schemas.notebooks import DESCRIPTION_MAX, NAME_MAX

FORMAT = "studyrag-notebook"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# The only entry names an archive may hold (besides the manifest).
ENTRY_PATTERNS = {
    "document": re.compile(r"documents/(\d{1,9})\.json"),
    "original": re.compile(r"originals/([0-9a-f]{64})"),
    "vectors": re.compile(r"vectors/(\d{1,9})\.f32"),
    "conversation": re.compile(r"conversations/(\d{1,9})\.json"),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArchiveEntry(_Strict):
    """Size and sha256 of one entry's (uncompressed) bytes, as written."""

    size: int = Field(ge=0, le=SQLITE_INT_MAX)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ArchivedNotebook(_Strict):
    name: str = Field(min_length=1, max_length=NAME_MAX)
    description: str = Field(default="", max_length=DESCRIPTION_MAX)
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None


class ArchivedDocumentRef(_Strict):
    """The manifest's line for one document: where its entries are."""

    entry: str
    filename: str
    original: str | None = None
    vectors: str | None = None
    chunks: int = Field(ge=0, le=SQLITE_INT_MAX)


class ArchiveManifest(_Strict):
    format: str
    format_version: int = Field(ge=1, le=SQLITE_INT_MAX)
    created_at: datetime
    studyrag_version: str = ""
    notebook: ArchivedNotebook
    # The model the chunks were embedded with, and its vector size (vectors optional).
    embedding_model: str | None = None
    dimensions: int | None = Field(default=None, ge=1, le=65536)
    documents: list[ArchivedDocumentRef] = Field(default_factory=list)
    conversations: list[str] = Field(default_factory=list)
    entries: dict[str, ArchiveEntry] = Field(default_factory=dict)


class ArchivedChunk(_Strict):
    index: int = Field(ge=0, le=SQLITE_INT_MAX)
    text: str
    start_char: int = Field(ge=0, le=SQLITE_INT_MAX)
    end_char: int = Field(ge=0, le=SQLITE_INT_MAX)
    page: int | None = Field(default=None, ge=0, le=SQLITE_INT_MAX)
    section: str = ""
    context: str = ""
    token_count: int = Field(default=0, ge=0, le=SQLITE_INT_MAX)


class ArchivedDocument(_Strict):
    # The id it had where it was exported: message sources name it (remapped on import).
    id: str = Field(min_length=1, max_length=64)
    filename: str = Field(min_length=1, max_length=512)
    file_type: str = Field(min_length=1, max_length=16)
    size: int = Field(ge=0, le=SQLITE_INT_MAX)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    # completed | failed | cancelled (in-flight documents are not exported)
    status: str = Field(pattern=r"^(completed|failed|cancelled)$")
    error_code: str | None = Field(default=None, max_length=16)
    error: str | None = None
    embedding_model: str | None = Field(default=None, max_length=256)
    # Loader metadata, page_starts (where each PDF page begins in `content`) included.
    metadata: dict[str, Any] = Field(default_factory=dict)
    content: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    # Chunk ids it had where it was exported, by index (message sources name them).
    chunk_ids: list[Annotated[int, Field(ge=0, le=SQLITE_INT_MAX)]] = Field(default_factory=list)
    chunks: list[ArchivedChunk] = Field(default_factory=list)


class ArchivedMessage(_Strict):
    seq: int = Field(ge=1, le=SQLITE_INT_MAX)
    role: str = Field(pattern=r"^(user|assistant|system)$")
    content: str = ""
    sources: list[Any] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    status: str = Field(pattern=r"^(complete|incomplete|error)$")
    created_at: datetime


class ArchivedConversation(_Strict):
    title: str = Field(max_length=200)
    status: str = Field(pattern=r"^(active|archived)$")
    metadata: dict[str, Any] = Field(default_factory=dict)
    last_seq: int = Field(ge=0, le=SQLITE_INT_MAX)
    last_message_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    messages: list[ArchivedMessage] = Field(default_factory=list)


class NotebookImportAccepted(BaseModel):
    """202 answer of POST /api/notebooks/import: follow the job (GET /api/jobs/{job_id})."""

    job_id: str
    name: str
    documents: int
    conversations: int
