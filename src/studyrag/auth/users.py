"""Users: names, passwords (argon2), admin and disabled flags; the first admin."""

from __future__ import annotations

import re

from studyrag.auth.passwords import hash_password, verify_password
from studyrag.db.auth import AuthRepo
from studyrag.db.models import User
from studyrag.errors import InvalidAuthRequest, LoginFailed, UserNotFound
from studyrag.schemas.auth import USER_NAME_MAX, UserPublic

_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._@-]{{0,{USER_NAME_MAX - 1}}}")


def check_user_name(name: str) -> str:
    """A user name: letters, digits and . _ @ -, starting with a letter or digit."""
    name = name.strip()
    if not _NAME.fullmatch(name):
        raise InvalidAuthRequest(
            f"{name[:80]!r} is not a valid user name.",
            hint=f"Use up to {USER_NAME_MAX} letters, digits, '.', '_', '@' or '-'.",
        )
    return name


class UserService:
    """Creating, listing, disabling users and checking their passwords."""

    def __init__(self, repo: AuthRepo) -> None:
        self.repo = repo

    async def create(self, name: str, password: str | None, *, is_admin: bool = False) -> User:
        """A new user; the first admin takes over what the local owner had."""
        name = check_user_name(name)
        hashed = await hash_password(password) if password is not None else None
        first_admin = is_admin and await self.repo.first_admin() is None
        return await self.repo.create_user(
            name, password_hash=hashed, is_admin=is_admin, claim_unowned=first_admin
        )

    async def get(self, name: str) -> User:
        row = await self.repo.user_by_name(name)
        if row is None:
            raise UserNotFound(f"No user named {name[:80]!r}.")
        return row

    async def all(self) -> list[UserPublic]:
        return [UserPublic.from_row(u) for u in await self.repo.users()]

    async def set_disabled(self, name: str, disabled: bool = True) -> User:
        """Disable (or enable) a user; their sessions end, their keys stop working."""
        row = await self.get(name)
        await self.repo.update_user(row.id, disabled=disabled)
        row.disabled = disabled
        return row

    async def reset_password(self, name: str, password: str) -> User:
        """A new password; every login session of the user ends."""
        row = await self.get(name)
        await self.repo.update_user(row.id, password_hash=await hash_password(password))
        return row

    async def authenticate(self, name: str, password: str) -> User:
        """The user whose name and password these are, or LoginFailed (AUTH_003)."""
        row = await self.repo.user_by_name(name)
        ok = await verify_password(row.password_hash if row is not None else None, password)
        if row is None or not ok or row.disabled:
            raise LoginFailed("Wrong user name or password, or the account is disabled.")
        return row
