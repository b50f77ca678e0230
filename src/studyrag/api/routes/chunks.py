"""GET /api/chunks/{id}: a passage with its place in the document and, for PDFs and images,
where a quoted span of it is drawn on the page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Query
from fastapi import Path as PathParam

from studyrag.api.deps import AccessDep, ReadDep, ServicesDep
from studyrag.errors import ChunkNotFound, DocumentNotFound, HighlightUnavailable, InvalidSpan
from studyrag.schemas.base import SQLITE_INT_MAX
from studyrag.schemas.documents import ChunkPublic, PageRect, Quote

router = APIRouter(prefix="/api/chunks", tags=["documents"])


@router.get("/{chunk_id}", response_model=ChunkPublic)
async def get_chunk(
    services: ServicesDep,
    principal: ReadDep,
    access: AccessDep,
    chunk_id: int = PathParam(ge=1, le=SQLITE_INT_MAX),
    start: int | None = Query(None, ge=0, le=1 << 40),
    end: int | None = Query(None, ge=0, le=1 << 40),
) -> ChunkPublic:
    """The chunk; with ?start=&end= (document offsets) the quoted span and its rectangles."""
    chunk, doc, prev_id, next_id = await services.documents.chunk_with_neighbours(chunk_id)
    try:
        await access.document(principal, doc.id)
    except DocumentNotFound:
        raise ChunkNotFound(f"No chunk with id {chunk_id}.") from None
    q_start = chunk.start_char if start is None else start
    q_end = chunk.end_char if end is None else end
    content = await services.documents.get_content(doc.id)
    if not 0 <= q_start < q_end <= len(content):
        raise InvalidSpan(
            f"The span {q_start}..{q_end} is outside {doc.filename}'s text "
            f"(0..{len(content)} characters).",
            details={"length": len(content)},
        )
    rects = None
    if doc.file_type == "pdf" and services.originals.exists(doc.sha256):
        rects = await _pdf_rects(
            services.originals.path(doc.sha256), doc.meta, content, q_start, q_end
        )
    elif doc.file_type == "image":
        from studyrag.ingest.pdf_views import ocr_rects

        boxes = (doc.meta or {}).get("page_boxes") or {}
        rects = [PageRect(**p.to_dict()) for p in ocr_rects(boxes, q_start, q_end)]
    return ChunkPublic(
        id=chunk.id,
        document_id=doc.id,
        notebook_id=doc.notebook_id,
        filename=doc.filename,
        file_type=doc.file_type,
        index=chunk.index,
        page=chunk.page,
        section=chunk.section,
        start=chunk.start_char,
        end=chunk.end_char,
        text=chunk.text,
        previous_id=prev_id,
        next_id=next_id,
        quote=Quote(start=q_start, end=q_end, text=content[q_start:q_end]),
        rects=rects,
    )


async def _pdf_rects(
    path: Path, meta: dict[str, Any] | None, content: str, start: int, end: int
) -> list[PageRect] | None:
    """Where the span is drawn on its pages; None when the kept PDF no longer gives the
    stored text (extracted by another loader), so the viewer falls back to the page."""
    from studyrag.ingest.pdf_views import highlight_rects

    page_starts = (meta or {}).get("page_starts")
    page_boxes = (meta or {}).get("page_boxes")
    try:
        found = await anyio.to_thread.run_sync(
            lambda: highlight_rects(
                path, content, start, end, page_starts=page_starts, page_boxes=page_boxes
            )
        )
    except HighlightUnavailable:
        return None
    return [PageRect(**p.to_dict()) for p in found]
