"""Notebook shares: with named users or everyone ("*"), as viewer (search and chat, own
conversations private) or editor (also add and remove sources). Only the owner shares."""

from __future__ import annotations

from studyrag.db.auth import EVERYONE, AuthRepo
from studyrag.errors import InvalidAuthRequest, UserNotFound
from studyrag.schemas.auth import SharePublic, ShareRole

# The notebook event that makes /ws/notebooks/{id} check again whether its user still sees
# the notebook (api/routes/notebook_ws.py; never sent to clients).
SHARE_REMOVED = "share_removed"


class ShareService:
    def __init__(self, repo: AuthRepo) -> None:
        self.repo = repo

    async def _grantee(self, name: str, *, owner_id: str | None) -> str:
        if name.strip() == EVERYONE:
            return EVERYONE
        user = await self.repo.user_by_name(name)
        if user is None:
            raise UserNotFound(f"No user named {name[:80]!r}.")
        if user.id == owner_id:
            raise InvalidAuthRequest("The owner of a notebook has every right on it already.")
        return user.id

    async def share(self, notebook_id: str, name: str, role: ShareRole) -> SharePublic:
        """Give (or change) a user's or everyone's role on a notebook."""
        _, owner = await self.repo.notebook_owner(notebook_id)
        grantee = await self._grantee(name, owner_id=owner)
        row = await self.repo.put_share(notebook_id, grantee, role)
        return SharePublic(
            notebook_id=notebook_id,
            user=name.strip() if grantee == EVERYONE else (await self._name(grantee)),
            role=role,
            created_at=row.created_at,
        )

    async def all(self, notebook_id: str) -> list[SharePublic]:
        rows = await self.repo.shares(notebook_id)
        names = await self.repo.user_names([r.grantee for r in rows if r.grantee != EVERYONE])
        return [
            SharePublic(
                notebook_id=notebook_id,
                user=EVERYONE if r.grantee == EVERYONE else names.get(r.grantee, "?"),
                role=r.role,  # type: ignore[arg-type]
                created_at=r.created_at,
            )
            for r in rows
        ]

    async def remove(self, notebook_id: str, name: str) -> bool:
        """Take a share away; whether there was one."""
        _, owner = await self.repo.notebook_owner(notebook_id)
        grantee = await self._grantee(name, owner_id=owner)
        return await self.repo.delete_share(notebook_id, grantee)

    async def _name(self, user_id: str) -> str:
        return (await self.repo.user_names([user_id])).get(user_id, "?")
