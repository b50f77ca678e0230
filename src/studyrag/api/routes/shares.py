"""Notebook shares over HTTP: POST/GET/DELETE /api/notebooks/{id}/shares (owner only)."""

from __future__ import annotations

from fastapi import APIRouter

from studyrag.api.deps import AccessDep, ServicesDep, WriteDep
from studyrag.auth.shares import SHARE_REMOVED
from studyrag.errors import UserNotFound
from studyrag.schemas.auth import ShareCreate, ShareList, SharePublic, ShareRemove

router = APIRouter(prefix="/api/notebooks", tags=["notebooks"])


@router.post("/{notebook_id}/shares", status_code=201)
async def add_share(
    notebook_id: str,
    body: ShareCreate,
    services: ServicesDep,
    principal: WriteDep,
    access: AccessDep,
) -> SharePublic:
    """Share with a user (by name) or everyone ("*") as viewer or editor; again: change."""
    await access.notebook(principal, notebook_id, "owner")
    return await services.auth.shares.share(notebook_id, body.user, body.role)


@router.get("/{notebook_id}/shares")
async def list_shares(
    notebook_id: str, services: ServicesDep, principal: WriteDep, access: AccessDep
) -> ShareList:
    await access.notebook(principal, notebook_id, "owner")
    return ShareList(items=await services.auth.shares.all(notebook_id))


@router.delete("/{notebook_id}/shares")
async def remove_share(
    notebook_id: str,
    body: ShareRemove,
    services: ServicesDep,
    principal: WriteDep,
    access: AccessDep,
) -> dict[str, str]:
    """Take a user's (or everyone's) share away: body {user}; their conversations there
    become unreachable until it is shared again."""
    await access.notebook(principal, notebook_id, "owner")
    if not await services.auth.shares.remove(notebook_id, body.user):
        raise UserNotFound(f"The notebook is not shared with {body.user[:80]!r}.")
    # Open notebook sockets check again whether their user still sees the notebook.
    services.jobs.events.emit(
        {"type": SHARE_REMOVED, "notebook_id": notebook_id}, notebook_id=notebook_id, job_id=None
    )
    return {"removed": body.user}
