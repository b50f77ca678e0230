"""Account persistence: users, API keys, login sessions, notebook shares and who owns what.

All SQL of auth/ is here; the rules (names, passwords, scopes, roles) are in auth/.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from studyrag.db.models import (
    ApiKey,
    Conversation,
    Document,
    Job,
    LoginSession,
    Notebook,
    NotebookShare,
    User,
    utcnow,
)
from studyrag.db.session import Database
from studyrag.errors import UserExists

EVERYONE = "*"
# Notebook.name's length (schemas/notebooks.py NAME_MAX).
NAME_LIMIT = 200
OWNED_TABLES = (Notebook, Conversation, Job)


def user_key(name: str) -> str:
    """User names are unique whatever their case."""
    return name.strip().casefold()


class AuthRepo:
    """Every statement about accounts, credentials, shares and owners."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- users -------------------------------------------------------------------------
    async def create_user(
        self, name: str, *, password_hash: str | None, is_admin: bool, claim_unowned: bool
    ) -> User:
        """Insert a user; with `claim_unowned`, the rows of the local owner become theirs
        in the same transaction (the first admin takes over a local library)."""
        row = User(
            name=name, name_key=user_key(name), password_hash=password_hash, is_admin=is_admin
        )
        try:
            async with self.db.session() as s:
                s.add(row)
                await s.flush()
                if claim_unowned:
                    for table in OWNED_TABLES:
                        await s.execute(
                            update(table).where(table.owner_id.is_(None)).values(owner_id=row.id)
                        )
        except IntegrityError as exc:
            raise UserExists(f"A user named {name!r} exists already.") from exc
        return row

    async def claim_unowned(self, user_id: str) -> None:
        """Give the local owner's rows (made in local mode, or before 0005) to this user.

        Names are unique per owner: a local notebook named like one of the user's own
        becomes "name (2)" (or the next free number) as it changes hands."""
        async with self.db.session() as s:
            await _rename_clashes(s, user_id)
            for table in OWNED_TABLES:
                await s.execute(
                    update(table).where(table.owner_id.is_(None)).values(owner_id=user_id)
                )

    async def user_by_name(self, name: str) -> User | None:
        async with self.db.session() as s:
            return await s.scalar(select(User).where(User.name_key == user_key(name)))

    async def user(self, user_id: str) -> User | None:
        async with self.db.session() as s:
            return await s.get(User, user_id)

    async def users(self) -> builtins.list[User]:
        async with self.db.session() as s:
            return builtins.list((await s.scalars(select(User).order_by(User.created_at))).all())

    async def count_users(self) -> int:
        async with self.db.session() as s:
            return len((await s.scalars(select(User.id).limit(1))).all())

    async def first_admin(self) -> User | None:
        async with self.db.session() as s:
            stmt = select(User).where(User.is_admin.is_(True)).order_by(User.created_at).limit(1)
            return await s.scalar(stmt)

    async def update_user(
        self, user_id: str, *, password_hash: str | None = None, disabled: bool | None = None
    ) -> None:
        """Change a password or the disabled flag; either ends the user's login sessions."""
        values: dict[str, object] = {}
        if password_hash is not None:
            values["password_hash"] = password_hash
        if disabled is not None:
            values["disabled"] = disabled
        async with self.db.session() as s:
            await s.execute(update(User).where(User.id == user_id).values(**values))
            await s.execute(delete(LoginSession).where(LoginSession.user_id == user_id))

    # --- API keys ----------------------------------------------------------------------
    async def add_key(self, row: ApiKey) -> ApiKey:
        async with self.db.session() as s:
            s.add(row)
        return row

    async def key(self, key_id: str) -> ApiKey | None:
        async with self.db.session() as s:
            return await s.get(ApiKey, key_id)

    async def keys(self, *, user_id: str | None = None) -> builtins.list[ApiKey]:
        stmt = select(ApiKey).order_by(ApiKey.created_at)
        if user_id is not None:
            stmt = stmt.where(ApiKey.user_id == user_id)
        async with self.db.session() as s:
            return builtins.list((await s.scalars(stmt)).all())

    async def revoke_key(self, key_id: str, *, when: datetime) -> bool:
        async with self.db.session() as s:
            result = await s.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=when)
            )
        return bool(getattr(result, "rowcount", 0))

    async def touch_key(self, key_id: str, *, when: datetime) -> None:
        async with self.db.session() as s:
            await s.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=when))

    # --- sessions ----------------------------------------------------------------------
    async def add_session(self, token_hash: str, *, user_id: str, expires_at: datetime) -> None:
        async with self.db.session() as s:
            # Expired sessions go whenever a new one is made: the table stays small.
            await s.execute(delete(LoginSession).where(LoginSession.expires_at < utcnow()))
            s.add(LoginSession(token_hash=token_hash, user_id=user_id, expires_at=expires_at))

    async def session_user(self, token_hash: str) -> tuple[LoginSession, User] | None:
        async with self.db.session() as s:
            row = await s.get(LoginSession, token_hash)
            if row is None:
                return None
            user = await s.get(User, row.user_id)
        return (row, user) if user is not None else None

    async def delete_session(self, token_hash: str) -> None:
        async with self.db.session() as s:
            await s.execute(delete(LoginSession).where(LoginSession.token_hash == token_hash))

    # --- shares ------------------------------------------------------------------------
    async def put_share(self, notebook_id: str, grantee: str, role: str) -> NotebookShare:
        async with self.db.session() as s:
            row = await s.get(NotebookShare, (notebook_id, grantee))
            if row is None:
                row = NotebookShare(notebook_id=notebook_id, grantee=grantee, role=role)
                s.add(row)
            else:
                row.role = role
        return row

    async def shares(self, notebook_id: str) -> builtins.list[NotebookShare]:
        async with self.db.session() as s:
            stmt = (
                select(NotebookShare)
                .where(NotebookShare.notebook_id == notebook_id)
                .order_by(NotebookShare.created_at)
            )
            return builtins.list((await s.scalars(stmt)).all())

    async def delete_share(self, notebook_id: str, grantee: str) -> bool:
        async with self.db.session() as s:
            result = await s.execute(
                delete(NotebookShare).where(
                    NotebookShare.notebook_id == notebook_id, NotebookShare.grantee == grantee
                )
            )
        return bool(getattr(result, "rowcount", 0))

    async def share_roles(self, notebook_id: str, user_id: str) -> builtins.list[str]:
        """The roles this user holds on a notebook, directly or as one of everyone."""
        async with self.db.session() as s:
            stmt = select(NotebookShare.role).where(
                NotebookShare.notebook_id == notebook_id,
                NotebookShare.grantee.in_((user_id, EVERYONE)),
            )
            return builtins.list((await s.scalars(stmt)).all())

    # --- owners ------------------------------------------------------------------------
    async def notebook_owner(self, notebook_id: str) -> tuple[bool, str | None]:
        """(whether the notebook exists, its owner id)."""
        async with self.db.session() as s:
            row = await s.execute(select(Notebook.owner_id).where(Notebook.id == notebook_id))
            found = row.first()
        return (found is not None, found[0] if found is not None else None)

    async def visible_notebook_ids(self, user_id: str) -> set[str]:
        """Notebooks this user owns or was given (by name or as everyone)."""
        async with self.db.session() as s:
            owned = await s.scalars(select(Notebook.id).where(Notebook.owner_id == user_id))
            shared = await s.scalars(
                select(NotebookShare.notebook_id).where(
                    or_(NotebookShare.grantee == user_id, NotebookShare.grantee == EVERYONE)
                )
            )
            return set(owned.all()) | set(shared.all())

    async def oldest_owned_notebook(self, user_id: str) -> str | None:
        async with self.db.session() as s:
            stmt = (
                select(Notebook.id)
                .where(Notebook.owner_id == user_id, Notebook.status == "active")
                .order_by(Notebook.created_at)
                .limit(1)
            )
            return await s.scalar(stmt)

    async def conversation_owner(self, conversation_id: str) -> tuple[str, str | None] | None:
        """(notebook id, owner id) of a conversation, or None."""
        async with self.db.session() as s:
            row = await s.execute(
                select(Conversation.notebook_id, Conversation.owner_id).where(
                    Conversation.id == conversation_id
                )
            )
            found = row.first()
        return (found[0], found[1]) if found is not None else None

    async def document_notebook(self, document_id: str) -> str | None:
        async with self.db.session() as s:
            return await s.scalar(select(Document.notebook_id).where(Document.id == document_id))

    async def job_owner(self, job_id: str) -> tuple[bool, str | None, str | None]:
        """(whether the job exists, its owner id, its notebook id)."""
        async with self.db.session() as s:
            row = await s.execute(select(Job.owner_id, Job.notebook_id).where(Job.id == job_id))
            found = row.first()
        return (True, found[0], found[1]) if found is not None else (False, None, None)

    async def user_names(self, user_ids: Sequence[str]) -> dict[str, str]:
        if not user_ids:
            return {}
        async with self.db.session() as s:
            rows = await s.execute(select(User.id, User.name).where(User.id.in_(list(user_ids))))
            return {uid: name for uid, name in rows.all()}


async def _rename_clashes(s: Any, user_id: str) -> None:
    """Rename the unowned notebooks whose names `user_id` already uses (see claim_unowned)."""
    from studyrag.db.notebooks import name_key

    own = select(Notebook.name_key).where(Notebook.owner_id == user_id)
    theirs = set((await s.scalars(own)).all())
    if not theirs:
        return
    unowned = (
        await s.scalars(
            select(Notebook).where(Notebook.owner_id.is_(None)).order_by(Notebook.created_at)
        )
    ).all()
    # A new name must be free among both owners' names: it is unowned until the update.
    taken = theirs | {nb.name_key for nb in unowned}
    for nb in unowned:
        if nb.name_key not in theirs:
            continue
        n = 2
        while True:
            suffix = f" ({n})"
            candidate = nb.name[: NAME_LIMIT - len(suffix)].rstrip() + suffix
            if name_key(candidate) not in taken:
                break
            n += 1
        nb.name, nb.name_key = candidate, name_key(candidate)
        taken.add(nb.name_key)
    await s.flush()
