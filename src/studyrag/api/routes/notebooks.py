"""Notebooks over HTTP: CRUD with counts, their documents, uploads (202 + job) and reindex."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from fastapi import APIRouter, Query, Request

from studyrag.api.deps import AccessDep, ReadDep, ServicesDep, WriteDep
from studyrag.api.multipart import FilePart, file_parts, multipart_openapi
from studyrag.auth.policy import Access, Principal
from studyrag.auth.quotas import UploadBudget
from studyrag.errors import InvalidNotebook
from studyrag.jobs.service import Upload
from studyrag.schemas.documents import DocumentPage, DocumentPublic, JobPublic, UploadAccepted
from studyrag.schemas.notebooks import (
    NotebookCreate,
    NotebookDeleteAccepted,
    NotebookList,
    NotebookPublic,
    NotebookUpdate,
)

router = APIRouter(prefix="/api/notebooks", tags=["notebooks"])
# Uploads apart: their bodies are files, limited while they are stored, not as JSON.
upload_router = APIRouter(prefix="/api/notebooks", tags=["notebooks"])

# Files one upload request may carry.
MAX_FILES_PER_UPLOAD = 100


@router.get("", response_model=NotebookList)
async def list_notebooks(
    services: ServicesDep,
    principal: ReadDep,
    access: AccessDep,
    ref: str | None = Query(None, min_length=1, max_length=200),
) -> NotebookList:
    """Every notebook the caller sees (own and shared), the default first, with document and
    conversation counts and sizes. `ref`: only the one that name, id or id start names for
    the caller, as every route resolves it (own first, then shared; NB_001, NB_011)."""
    default_id = await access.default_notebook(principal)
    if ref is not None:
        nb = await access.find_notebook(principal, ref)
        items = [await services.notebooks.public(nb, conversations_of=principal.user_id)]
        return NotebookList(
            items=await _with_roles(items, principal, access), total=1, default_id=default_id
        )
    items = await services.notebooks.list_public(conversations_of=principal.user_id)
    visible = await access.visible_notebooks(principal)
    if visible is not None:
        items = [nb for nb in items if nb.id in visible]
    items = await _with_roles(items, principal, access)
    return NotebookList(items=items, total=len(items), default_id=default_id)


async def _with_roles(
    items: list[NotebookPublic], principal: Principal, access: Access
) -> list[NotebookPublic]:
    """Each notebook with the caller's role on it (the page offers only what it allows)."""
    for nb in items:
        nb.role = await access.role(principal, nb.id) or "viewer"
    return items


@router.post("", status_code=201, response_model=NotebookPublic)
async def create_notebook(
    body: NotebookCreate, services: ServicesDep, principal: WriteDep
) -> NotebookPublic:
    nb = await services.notebooks.create(body.name, body.description)
    return await services.notebooks.public(nb, conversations_of=principal.user_id)


@router.get("/{notebook_id}", response_model=NotebookPublic)
async def get_notebook(
    notebook_id: str, services: ServicesDep, principal: ReadDep, access: AccessDep
) -> NotebookPublic:
    await access.notebook(principal, notebook_id)
    nb = await services.notebooks.repo.get(notebook_id)
    public = await services.notebooks.public(nb, conversations_of=principal.user_id)
    return (await _with_roles([public], principal, access))[0]


@router.put("/{notebook_id}", response_model=NotebookPublic)
async def update_notebook(
    notebook_id: str,
    body: NotebookUpdate,
    services: ServicesDep,
    principal: WriteDep,
    access: AccessDep,
) -> NotebookPublic:
    await access.notebook(principal, notebook_id, "owner")
    nb = await services.notebooks.update(notebook_id, name=body.name, description=body.description)
    return await services.notebooks.public(nb, conversations_of=principal.user_id)


@router.delete("/{notebook_id}", status_code=202, response_model=NotebookDeleteAccepted)
async def delete_notebook(
    notebook_id: str, services: ServicesDep, principal: WriteDep, access: AccessDep
) -> NotebookDeleteAccepted:
    """Hide the notebook at once; a job removes its documents, vectors, files and chats."""
    await access.notebook(principal, notebook_id, "owner")
    job = await services.jobs.delete_notebook(notebook_id)
    return NotebookDeleteAccepted(notebook_id=notebook_id, job_id=job.id)


@router.get("/{notebook_id}/documents", response_model=DocumentPage)
async def notebook_documents(
    notebook_id: str,
    services: ServicesDep,
    principal: ReadDep,
    access: AccessDep,
    status: str | None = Query(None, max_length=16),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=1_000_000),
) -> DocumentPage:
    """The notebook's documents, newest first, with their status, step and progress."""
    await access.notebook(principal, notebook_id)
    await services.notebooks.repo.get(notebook_id)
    docs, total = await services.documents.list(
        notebook_id=notebook_id, status=status, limit=limit, offset=offset
    )
    return DocumentPage(items=[DocumentPublic.from_row(d) for d in docs], total=total)


@upload_router.post(
    "/{notebook_id}/documents",
    status_code=202,
    response_model=UploadAccepted,
    openapi_extra=multipart_openapi("files", many=True),
)
async def upload_documents(
    notebook_id: str,
    request: Request,
    services: ServicesDep,
    principal: WriteDep,
    access: AccessDep,
) -> UploadAccepted:
    """Store the files and answer at once; ingestion runs as a job (GET /api/jobs/{id}).

    The form is streamed: each file goes straight into the data directory's .incoming/ and
    is refused (DOC_002) as soon as it passes the size limit, before the rest is read."""
    await access.notebook(principal, notebook_id, "editor")
    # The quotas (auth/quotas.py) before any byte is read: RATE_004, RATE_005.
    budget = await services.limits.upload(
        uploader=principal.user_id,
        notebook_id=notebook_id,
        declared_bytes=declared_length(request),
    )
    parts = file_parts(
        request, field="files", invalid=InvalidNotebook, max_files=MAX_FILES_PER_UPLOAD
    )
    first = await anext(parts, None)
    if first is None:
        raise InvalidNotebook("No files in the upload.", hint="Send files under the field `files`.")
    accepted = await services.jobs.upload(notebook_id, _uploads(first, parts, budget))
    if budget.refused is not None and all(d.status == "rejected" for d in accepted.documents):
        # Nothing was stored: the request is refused as a whole, with its status.
        raise budget.refused
    return accepted


async def _uploads(
    first: FilePart, rest: AsyncIterator[FilePart], budget: UploadBudget
) -> AsyncIterator[Upload]:
    part: FilePart | None = first
    while part is not None:
        name = safe_filename(part.filename)
        yield Upload(name, budget.chunks(name, part.chunks))
        part = await anext(rest, None)


def declared_length(request: Request) -> int | None:
    """The body's Content-Length, when the client sent one."""
    declared = request.headers.get("content-length")
    return int(declared) if declared and declared.isdigit() else None


@router.post("/{notebook_id}/reindex", status_code=202, response_model=JobPublic)
async def reindex_notebook(
    notebook_id: str, services: ServicesDep, principal: WriteDep, access: AccessDep
) -> JobPublic:
    """Recompute every completed document's embeddings, as a job."""
    await access.notebook(principal, notebook_id, "editor")
    job = await services.jobs.reindex(notebook_id)
    return await services.jobs.public(job.id)


def safe_filename(raw: str | None) -> str:
    """Only the last path component, in safe characters, short enough in bytes for any disk."""
    base = re.split(r"[\\/]", raw or "")[-1]
    name = re.sub(r"[^\w.\- ]+", "_", base).strip(" .")
    return name.encode()[:150].decode(errors="ignore") or "upload"
