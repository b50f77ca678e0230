"""Documents over HTTP: upload (synchronous), list, show, delete, cancel, retry, reindex,
the kept original (with Range), windows of the extracted text and rendered PDF pages."""

from __future__ import annotations

import asyncio
import mimetypes
import re
from typing import Any
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response, StreamingResponse

from studyrag.api.deps import AccessDep, ReadDep, ServicesDep, WriteDep
from studyrag.api.multipart import file_parts, multipart_openapi
from studyrag.api.routes.notebooks import declared_length, safe_filename
from studyrag.errors import (
    DocumentError,
    ExtractionFailed,
    FileTooLarge,
    FileUnpacksTooLarge,
    IngestionFailed,
    InvalidDocumentRequest,
    InvalidSpan,
    OriginalMissing,
    RangeNotSatisfiable,
    UnsupportedFileType,
)
from studyrag.ingest.pipeline import check_upload
from studyrag.schemas.base import SQLITE_INT_MAX
from studyrag.schemas.documents import (
    ChunkLocation,
    DocumentDetail,
    DocumentPage,
    DocumentPublic,
    JobPublic,
    TextWindow,
)

router = APIRouter(prefix="/api/documents", tags=["documents"])

_ERRORS: dict[str, type[DocumentError]] = {
    c.error_code: c
    for c in (
        UnsupportedFileType,
        FileTooLarge,
        ExtractionFailed,
        IngestionFailed,
        FileUnpacksTooLarge,
    )
}
# The largest window of extracted text one request returns.
MAX_TEXT_WINDOW = 200_000
_CONTENT_TYPES = {
    "pdf": "application/pdf",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    # Served as text: an uploaded page must never run as a page of this origin.
    "html": "text/plain; charset=utf-8",
    "markdown": "text/markdown; charset=utf-8",
    "text": "text/plain; charset=utf-8",
}


@router.post("", status_code=201, openapi_extra=multipart_openapi("file", many=False))
async def upload(
    request: Request,
    services: ServicesDep,
    principal: WriteDep,
    access: AccessDep,
    notebook_id: str | None = Query(None, max_length=64),
) -> dict[str, Any]:
    """Ingest one file and wait for it (POST /api/notebooks/{id}/documents does not wait).

    The form is streamed straight into the data directory's .incoming/, the size limit
    checked as it arrives (413 DOC_002 at once, the rest unread)."""
    nb_id = await access.resolve_notebook(principal, notebook_id, "editor")
    settings = services.settings.ingest
    declared = declared_length(request)
    if declared is not None and declared > settings.max_file_size_bytes + 65536:
        raise FileTooLarge(
            f"The upload is {declared / 1e6:.1f} MB; the limit is {settings.max_file_size_mb:g} MB."
        )
    # The quotas (auth/quotas.py) before any byte is read: RATE_004, RATE_005.
    budget = await services.limits.upload(
        uploader=principal.user_id, notebook_id=nb_id, declared_bytes=declared
    )
    parts = file_parts(request, field="file", invalid=InvalidDocumentRequest, max_files=1)
    file = await anext(parts, None)
    if file is None:
        raise InvalidDocumentRequest(
            "No file in the upload.", hint="Send the file under the form field `file`."
        )
    name = safe_filename(file.filename)
    check_upload(name, None, settings)
    sha, size = await services.originals.save_stream(
        budget.chunks(name, file.chunks), limit=settings.max_file_size_bytes, name=name
    )
    await parts.aclose()
    registered = await services.pipeline.register_stored(
        sha=sha, size=size, filename=name, notebook_id=nb_id
    )
    if registered.status != "queued" or registered.document_id is None:
        return registered.to_dict() | {"path": None}
    try:
        (result,) = await services.pipeline.process([registered.document_id])
    except asyncio.CancelledError:
        # The client went away: the document is back in the queue; a job finishes it.
        await asyncio.shield(services.jobs.adopt(nb_id, [registered.document_id]))
        raise
    if result.status == "failed":
        # Recorded as a failed document; the client gets the error with its id.
        raise _ERRORS.get(result.error_code or "", IngestionFailed)(
            result.error or "ingestion failed", details={"document_id": result.document_id}
        )
    return result.to_dict() | {"path": None}


@router.get("", response_model=DocumentPage)
async def list_documents(
    services: ServicesDep,
    principal: ReadDep,
    access: AccessDep,
    status: str | None = Query(None, max_length=16),
    notebook_id: str | None = Query(None, max_length=64),
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=1_000_000),
) -> DocumentPage:
    """Documents newest first (of one notebook when `notebook_id` is given)."""
    visible = None
    if notebook_id is not None:
        await access.notebook(principal, notebook_id)
        await services.notebooks.repo.get(notebook_id)
    else:
        visible = await access.visible_notebooks(principal)
    docs, total = await services.documents.list(
        notebook_id=notebook_id, status=status, limit=limit, offset=offset, notebook_ids=visible
    )
    return DocumentPage(items=[DocumentPublic.from_row(d) for d in docs], total=total)


@router.get("/{document_id}", response_model=DocumentDetail)
async def get_document(
    document_id: str, services: ServicesDep, principal: ReadDep, access: AccessDep
) -> DocumentDetail:
    """One document with its chunks' locations."""
    await access.document(principal, document_id)
    doc = await services.documents.get(document_id)
    chunks = await services.documents.chunks_for(document_id)
    return DocumentDetail(
        **DocumentPublic.from_row(doc).model_dump(),
        chunks=[ChunkLocation.from_row(c) for c in chunks],
    )


@router.delete("/{document_id}")
async def delete_document(
    document_id: str, services: ServicesDep, principal: WriteDep, access: AccessDep
) -> dict[str, Any]:
    """Remove the document and every chunk everywhere, and its original if unused."""
    await access.document(principal, document_id, "editor")
    doc = await services.pipeline.delete_document(document_id)
    services.jobs.announce_deleted(doc)
    return {"deleted": document_id}


@router.post("/{document_id}/cancel", response_model=DocumentPublic)
async def cancel_document(
    document_id: str, services: ServicesDep, principal: WriteDep, access: AccessDep
) -> DocumentPublic:
    """Stop this document's ingestion at the next step boundary."""
    await access.document(principal, document_id, "editor")
    return DocumentPublic.from_row(await services.jobs.cancel_document(document_id))


@router.post("/{document_id}/retry", status_code=202, response_model=JobPublic)
async def retry_document(
    document_id: str, services: ServicesDep, principal: WriteDep, access: AccessDep
) -> JobPublic:
    """Ingest a failed or cancelled document again from its kept original, as a job."""
    await access.document(principal, document_id, "editor")
    job = await services.jobs.retry(document_id)
    return await services.jobs.public(job.id)


@router.post("/{document_id}/reindex", status_code=202, response_model=JobPublic)
async def reindex_document(
    document_id: str, services: ServicesDep, principal: WriteDep, access: AccessDep
) -> JobPublic:
    """Recompute the document's embeddings with the current model, as a job."""
    await access.document(principal, document_id, "editor")
    doc = await services.documents.get(document_id)
    job = await services.jobs.reindex(doc.notebook_id, [document_id])
    return await services.jobs.public(job.id)


@router.get(
    "/{document_id}/file",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"*/*": {}}, "description": "The original, in its own type"},
        206: {"content": {"*/*": {}}, "description": "The range asked for"},
    },
)
async def get_original(
    document_id: str,
    request: Request,
    services: ServicesDep,
    principal: ReadDep,
    access: AccessDep,
) -> Response:
    """The original file, with its type, a safe download name and HTTP Range support."""
    await access.document(principal, document_id)
    doc = await services.documents.get(document_id)
    path = services.originals.path(doc.sha256)
    if not services.originals.exists(doc.sha256):
        raise OriginalMissing(f"The original of {doc.filename} is not kept.")
    size = (await anyio.Path(path).stat()).st_size
    content_type = _CONTENT_TYPES.get(doc.file_type) or (
        mimetypes.guess_type(doc.filename)[0] or "application/octet-stream"
    )
    headers = {
        "accept-ranges": "bytes",
        "content-disposition": _disposition(doc.filename),
        "x-content-type-options": "nosniff",
        # Whatever the browser makes of it, nothing in it runs or loads anything.
        "content-security-policy": "default-src 'none'; sandbox",
        "cache-control": "private, max-age=3600",
        "etag": f'"{doc.sha256}"',
    }
    start, end = 0, size - 1
    status = 200
    wanted = request.headers.get("range")
    if wanted:
        start, end = _parse_range(wanted, size)
        status = 206
        headers["content-range"] = f"bytes {start}-{end}/{size}"
    headers["content-length"] = str(max(0, end - start + 1))
    return StreamingResponse(
        _file_bytes(path, start, end + 1), status_code=status, media_type=content_type,
        headers=headers,
    )  # fmt: skip


@router.get("/{document_id}/text", response_model=TextWindow)
async def get_text(
    document_id: str,
    services: ServicesDep,
    principal: ReadDep,
    access: AccessDep,
    start: int = Query(0, ge=0, le=1 << 40),
    end: int | None = Query(None, ge=0, le=1 << 40),
) -> TextWindow:
    """A window of the extracted text the chunk offsets point into (non-PDF viewers)."""
    await access.document(principal, document_id)
    doc = await services.documents.get(document_id)
    content = await services.documents.get_content(document_id)
    stop = len(content) if end is None else end
    stop = min(stop, start + MAX_TEXT_WINDOW) if end is None else stop
    if start > len(content) or stop > len(content) or stop < start:
        raise InvalidSpan(
            f"The span {start}..{stop} is outside {doc.filename}'s text "
            f"(0..{len(content)} characters).",
            details={"length": len(content)},
        )
    if stop - start > MAX_TEXT_WINDOW:
        raise InvalidSpan(f"At most {MAX_TEXT_WINDOW} characters per request.")
    return TextWindow(
        document_id=document_id,
        start=start,
        end=stop,
        length=len(content),
        text=content[start:stop],
    )


@router.get(
    "/{document_id}/pages/{page}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
async def get_page_image(
    document_id: str,
    services: ServicesDep,
    principal: ReadDep,
    access: AccessDep,
    page: int = Path(ge=1, le=SQLITE_INT_MAX),
    scale: float = Query(1.5, gt=0, le=4, allow_inf_nan=False),
) -> Response:
    """One page of a PDF (or an image's one page) rendered as PNG (cached; a few megapixels)."""
    from studyrag.ingest.pdf_views import render_image_png, render_page_png

    await access.document(principal, document_id)
    doc = await services.documents.get(document_id)
    render = {"pdf": render_page_png, "image": render_image_png}.get(doc.file_type)
    if render is None:
        raise InvalidSpan(
            f"{doc.filename} is not a PDF or an image; it has no pages to render.",
            hint="Show its text with GET /api/documents/{id}/text instead.",
        )
    if not services.originals.exists(doc.sha256):
        raise OriginalMissing(f"The original of {doc.filename} is not kept.")
    # Rounded so that near-equal scales share one cached image.
    scale = round(scale, 2)
    cache = services.settings.data_dir / "cache" / "pages" / f"{doc.sha256}-{page}-{scale}.png"
    if await anyio.Path(cache).is_file():
        data = await anyio.Path(cache).read_bytes()
    else:
        path = services.originals.path(doc.sha256)
        data = await anyio.to_thread.run_sync(
            lambda: render(path, page, scale=scale), limiter=_RENDER_LIMITER
        )
        await anyio.Path(cache.parent).mkdir(parents=True, exist_ok=True)
        tmp = anyio.Path(f"{cache}.{id(data)}.tmp")
        await tmp.write_bytes(data)
        await tmp.replace(cache)
    return Response(
        data,
        media_type="image/png",
        headers={"cache-control": "private, max-age=86400", "etag": f'"{doc.sha256}-{page}"'},
    )


# Rendering is CPU work: one page at a time per process keeps search interactive.
_RENDER_LIMITER = anyio.CapacityLimiter(1)
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _parse_range(header: str, size: int) -> tuple[int, int]:
    """One byte range (first-last, first-, or -suffix); 416 when it cannot be served."""
    match = _RANGE.match(header.strip())
    refused = RangeNotSatisfiable(
        f"The range {header!r} is outside the file ({size} bytes).",
        details={"size": size},
        hint="Ask for bytes=START-END with END < the file size, or no Range at all.",
    )
    if match is None or (not match.group(1) and not match.group(2)):
        raise refused
    first, last = match.group(1), match.group(2)
    if not first:
        length = int(last)
        if length == 0:
            raise refused
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise refused
    return start, end


async def _file_bytes(path: Any, start: int, stop: int) -> Any:
    async with await anyio.open_file(path, "rb") as fh:
        await fh.seek(start)
        left = stop - start
        while left > 0:
            block = await fh.read(min(left, 1 << 16))
            if not block:
                return
            left -= len(block)
            yield block


def _disposition(filename: str) -> str:
    """inline, with an ASCII fallback name and the exact UTF-8 name (RFC 6266)."""
    ascii_name = re.sub(r"[^A-Za-z0-9._ -]+", "_", filename) or "document"
    return f"inline; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"
