"""Documents over HTTP: upload (ingest), list, show, delete, reindex."""

from __future__ import annotations

import re
import uuid
from typing import Any

import anyio
from fastapi import APIRouter, Query, Request, UploadFile

from studyrag.api.deps import ServicesDep
from studyrag.db.models import Document
from studyrag.errors import (
    DocumentError,
    ExtractionFailed,
    FileTooLarge,
    IngestionFailed,
    UnsupportedFileType,
)

router = APIRouter(prefix="/api/documents", tags=["documents"])

_ERRORS: dict[str, type[DocumentError]] = {
    c.error_code: c for c in (UnsupportedFileType, FileTooLarge, ExtractionFailed, IngestionFailed)
}


def document_public(doc: Document) -> dict[str, Any]:
    """The JSON form of a document row."""
    return {
        "id": doc.id,
        "filename": doc.filename,
        "file_type": doc.file_type,
        "size": doc.size,
        "sha256": doc.sha256,
        "status": doc.status,
        "error_code": doc.error_code,
        "error": doc.error,
        "chunk_count": doc.chunk_count,
        "embedding_model": doc.embedding_model,
        "metadata": doc.meta or {},
        "created_at": doc.created_at.isoformat() if doc.created_at else None,
        "updated_at": doc.updated_at.isoformat() if doc.updated_at else None,
    }


@router.post("", status_code=201)
async def upload(request: Request, file: UploadFile, services: ServicesDep) -> dict[str, Any]:
    """Ingest one uploaded file; failures are recorded on the document and reported here."""
    limit = services.settings.ingest.max_file_size_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise FileTooLarge(
            f"The upload is {int(declared) / 1e6:.1f} MB; the limit is "
            f"{services.settings.ingest.max_file_size_mb:g} MB."
        )
    # Only the last path component, in safe characters, short enough in bytes for any disk.
    base = re.split(r"[\\/]", file.filename or "")[-1]
    name = re.sub(r"[^\w.\- ]+", "_", base).encode()[:150].decode(errors="ignore") or "upload"
    folder = services.settings.data_dir / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{uuid.uuid4().hex[:12]}_{name}"
    written = 0
    async with await anyio.open_file(target, "wb") as out:
        while chunk := await file.read(1 << 20):
            written += len(chunk)
            if written > limit:
                break
            await out.write(chunk)
    if written > limit:
        target.unlink(missing_ok=True)
        raise FileTooLarge(
            f"{name} is over the {services.settings.ingest.max_file_size_mb:g} MB limit."
        )
    try:
        result = await services.pipeline.ingest_file(target, filename=name)
    finally:
        # Everything needed later (text, chunks) is in the database; keep no copies around.
        await anyio.to_thread.run_sync(lambda: target.unlink(missing_ok=True))
    if result.status == "failed":
        # Recorded as a failed document; the client gets the error with its id.
        raise _ERRORS.get(result.error_code or "", IngestionFailed)(
            result.error or "ingestion failed", details={"document_id": result.document_id}
        )
    return result.to_dict() | {"path": None}


@router.get("")
async def list_documents(
    services: ServicesDep,
    status: str | None = None,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0),
) -> dict[str, Any]:
    """Documents newest first."""
    docs, total = await services.documents.list(status=status, limit=limit, offset=offset)
    return {"items": [document_public(d) for d in docs], "total": total}


@router.get("/{document_id}")
async def get_document(document_id: str, services: ServicesDep) -> dict[str, Any]:
    """One document with its chunks' locations."""
    doc = await services.documents.get(document_id)
    chunks = await services.documents.chunks_for(document_id)
    return document_public(doc) | {
        "chunks": [
            {
                "id": c.id,
                "index": c.index,
                "page": c.page,
                "section": c.section,
                "start": c.start_char,
                "end": c.end_char,
                "token_count": c.token_count,
            }
            for c in chunks
        ]
    }


@router.delete("/{document_id}")
async def delete_document(document_id: str, services: ServicesDep) -> dict[str, Any]:
    """Remove the document and every chunk everywhere."""
    await services.pipeline.delete_document(document_id)
    return {"deleted": document_id}


@router.post("/{document_id}/reindex")
async def reindex_document(document_id: str, services: ServicesDep) -> dict[str, Any]:
    """Recompute embeddings with the current model."""
    result = await services.pipeline.reindex(document_id)
    return result.to_dict() | {"path": None}
