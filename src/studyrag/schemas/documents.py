"""Documents, chunks and upload jobs as the HTTP API and the CLI's --json show them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from studyrag.db.models import Chunk, Document, Job
from studyrag.schemas.base import UTCDateTime

_INTERNAL_META = frozenset({"page_starts", "page_boxes"})


class DocumentPublic(BaseModel):
    """A document with its ingestion step and progress."""

    id: str
    notebook_id: str
    filename: str
    file_type: str
    size: int
    sha256: str
    status: str
    step: str
    progress: float
    error_code: str | None = None
    error: str | None = None
    chunk_count: int = 0
    embedding_model: str | None = None
    job_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: UTCDateTime | None = None
    updated_at: UTCDateTime | None = None

    @classmethod
    def from_row(cls, doc: Document) -> DocumentPublic:
        return cls(
            id=doc.id,
            notebook_id=doc.notebook_id,
            filename=doc.filename,
            file_type=doc.file_type,
            size=doc.size or 0,
            sha256=doc.sha256,
            status=doc.status,
            step=doc.step or doc.status,
            progress=round(float(doc.progress or 0.0), 1),
            error_code=doc.error_code,
            error=doc.error,
            chunk_count=doc.chunk_count or 0,
            embedding_model=doc.embedding_model,
            job_id=doc.job_id,
            # page_starts and page_boxes (OCR line boxes) are internal (highlighting) and
            # grow with the page count: not worth sending.
            metadata={k: v for k, v in (doc.meta or {}).items() if k not in _INTERNAL_META},
            created_at=doc.created_at,
            updated_at=doc.updated_at,
        )


class DocumentPage(BaseModel):
    items: list[DocumentPublic]
    total: int


class ChunkLocation(BaseModel):
    """Where a chunk sits in its document."""

    id: int
    index: int
    page: int | None
    section: str
    start: int
    end: int
    token_count: int

    @classmethod
    def from_row(cls, c: Chunk) -> ChunkLocation:
        return cls(
            id=c.id,
            index=c.index,
            page=c.page,
            section=c.section,
            start=c.start_char,
            end=c.end_char,
            token_count=c.token_count,
        )


class DocumentDetail(DocumentPublic):
    chunks: list[ChunkLocation] = Field(default_factory=list)


class PageRect(BaseModel):
    """Highlight rectangles of a text span on one PDF page (PDF points, origin top-left)."""

    page: int
    width: float
    height: float
    rects: list[tuple[float, float, float, float]]


class Quote(BaseModel):
    start: int
    end: int
    text: str


class ChunkPublic(BaseModel):
    """GET /api/chunks/{id}: a passage, where it is, its neighbours, and how to highlight it."""

    id: int
    document_id: str
    notebook_id: str
    filename: str
    file_type: str
    index: int
    page: int | None
    section: str
    start: int
    end: int
    text: str
    previous_id: int | None = None
    next_id: int | None = None
    # The quoted span asked for with ?start=&end= (document offsets), else the chunk itself.
    quote: Quote
    # PDFs only: where the quote is drawn on its page(s); None when it cannot be computed.
    rects: list[PageRect] | None = None


class TextWindow(BaseModel):
    """GET /api/documents/{id}/text: a window of the extracted text."""

    document_id: str
    start: int
    end: int
    length: int
    text: str


class UploadedDocument(BaseModel):
    """One file of an upload: queued, a duplicate of a document, or rejected with an error."""

    filename: str
    status: str
    document_id: str | None = None
    error_code: str | None = None
    error: str | None = None


class UploadAccepted(BaseModel):
    """202 answer of POST /api/notebooks/{id}/documents."""

    job_id: str | None
    notebook_id: str
    documents: list[UploadedDocument]


class JobPublic(BaseModel):
    """A background job with the progress of the documents it covers."""

    id: str
    kind: str
    status: str
    notebook_id: str | None
    progress: float
    counts: dict[str, int]
    error: str | None = None
    created_at: UTCDateTime | None = None
    finished_at: UTCDateTime | None = None
    documents: list[DocumentPublic] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_rows(cls, job: Job, documents: list[Document]) -> JobPublic:
        docs = [DocumentPublic.from_row(d) for d in documents]
        counts: dict[str, int] = {}
        for d in docs:
            counts[d.status] = counts.get(d.status, 0) + 1
        finished = ("completed", "failed", "cancelled")
        if docs:
            progress = sum(100.0 if d.status in finished else d.progress for d in docs) / len(docs)
        else:
            progress = 100.0 if job.status in finished else float(job.meta.get("progress", 0.0))
        return cls(
            id=job.id,
            kind=job.kind,
            status=job.status,
            notebook_id=job.notebook_id,
            progress=round(progress, 1),
            counts=counts,
            error=job.error,
            created_at=job.created_at,
            finished_at=job.finished_at,
            documents=docs,
            metadata=dict(job.meta or {}),
        )
