"""Notebook archives over HTTP: export streams one zip, import queues a restore job (202)."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from studyrag.api.deps import AccessDep, ReadDep, ServicesDep, WriteDep
from studyrag.api.multipart import file_parts, multipart_openapi
from studyrag.errors import ArchiveTooLarge, InvalidNotebook
from studyrag.schemas.archive import NotebookImportAccepted

# Room for the multipart framing around the archive itself.
_MULTIPART_SLACK = 64 * 1024

# Apart from the notebook routes: an import's body is a file, limited while it is stored.
router = APIRouter(prefix="/api/notebooks", tags=["notebooks"])


@router.get(
    "/{notebook_id}/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}}, "description": "The archive (zip)"}},
)
async def export_notebook(
    notebook_id: str,
    services: ServicesDep,
    principal: ReadDep,
    access: AccessDep,
    vectors: bool = Query(False, description="Include the chunks' vectors."),
) -> StreamingResponse:
    """The notebook as one zip archive, streamed as it is built (format: docs/protocol.md)."""
    # Checked before the first byte: an error still gets its status and the error shape.
    # Its owner exports a notebook, with their own conversations only.
    await access.notebook(principal, notebook_id, "owner")
    plan = await services.archives.plan_export(
        notebook_id, vectors=vectors, conversations_of=principal.user_id
    )
    return StreamingResponse(
        services.archives.stream_export(plan),
        media_type="application/zip",
        headers={"Content-Disposition": content_disposition(plan.filename)},
    )


@router.post(
    "/import",
    status_code=202,
    response_model=NotebookImportAccepted,
    openapi_extra=multipart_openapi("file", many=False),
)
async def import_notebook(
    request: Request, services: ServicesDep, principal: WriteDep
) -> NotebookImportAccepted:
    """Check the whole archive (refused with NB_005..NB_010, changing nothing), then restore
    it as a new notebook in a job: follow GET /api/jobs/{job_id} or its events.

    The form is read here, not by a parameter: a declared length over the limit is refused
    before a byte of the body is read (the framework would spool it all first)."""
    limits = services.settings.archive
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_archive_bytes + _MULTIPART_SLACK:
        raise ArchiveTooLarge(
            f"The archive is over the {limits.max_archive_mb:g} MB limit.",
            details={"limit": limits.max_archive_bytes, "size": int(declared)},
        )
    parts = file_parts(request, field="file", invalid=InvalidNotebook, max_files=1)
    upload = await anext(parts, None)
    if upload is None:
        raise InvalidNotebook(
            "No archive in the upload.", hint="Send the archive under the form field `file`."
        )
    try:
        return await services.archives.accept_upload(upload.chunks)
    finally:
        await parts.aclose()


def content_disposition(filename: str) -> str:
    """An attachment header every browser reads: an ASCII name plus the UTF-8 one."""
    ascii_name = filename.encode("ascii", "replace").decode().replace("?", "_").replace('"', "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"
