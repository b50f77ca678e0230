"""API keys: `srk_<id>_<secret>`, shown once, kept as a sha256, revocable, with an optional
expiry and scopes (read, chat, admin).

A key is 256 random bits, so a fast hash is enough to store it (unlike a password, it
cannot be guessed from a dictionary); its id finds the row, the hash is compared in
constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from datetime import timedelta

from studyrag.db.auth import AuthRepo
from studyrag.db.models import ApiKey, User, utcnow
from studyrag.errors import InvalidAuthRequest, KeyNotFound, Unauthorized
from studyrag.schemas.auth import KEY_NAME_MAX, ApiKeyCreated, ApiKeyPublic, Scope
from studyrag.schemas.base import as_utc

PREFIX = "srk_"
SCOPES: tuple[Scope, ...] = ("read", "chat", "admin")
# The longest expiry a key may be given.
MAX_DAYS = 3650


def check_scopes(scopes: Iterable[str]) -> list[Scope]:
    """Known scopes, in their canonical order; InvalidAuthRequest for any other."""
    given = {s.strip().lower() for s in scopes if s.strip()}
    unknown = given - set(SCOPES)
    if unknown or not given:
        raise InvalidAuthRequest(
            f"Unknown scopes: {', '.join(sorted(unknown))}." if unknown else "A key needs a scope.",
            hint="Scopes are read, chat and admin (comma-separated).",
        )
    return [s for s in SCOPES if s in given]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ApiKeyService:
    """Making, listing, revoking and checking keys."""

    def __init__(self, repo: AuthRepo) -> None:
        self.repo = repo

    async def create(
        self,
        user: User,
        *,
        name: str = "",
        scopes: Iterable[str] = SCOPES,
        expires_days: float | None = None,
    ) -> ApiKeyCreated:
        """A new key for `user`; the answer is the only place its secret ever appears."""
        if len(name) > KEY_NAME_MAX:
            raise InvalidAuthRequest(f"A key's name has at most {KEY_NAME_MAX} characters.")
        if expires_days is not None and not 0 < expires_days <= MAX_DAYS:
            raise InvalidAuthRequest(f"A key expires after 0 to {MAX_DAYS} days.")
        key_id = secrets.token_hex(6)
        token = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        now = utcnow()
        row = await self.repo.add_key(
            ApiKey(
                id=key_id,
                user_id=user.id,
                name=name,
                secret_hash=_digest(token),
                scopes=check_scopes(scopes),
                created_at=now,
                expires_at=now + timedelta(days=expires_days) if expires_days else None,
            )
        )
        public = ApiKeyPublic.from_row(row, user=user.name)
        return ApiKeyCreated(**public.model_dump(), key=token)

    async def all(self, *, user: User | None = None) -> list[ApiKeyPublic]:
        rows = await self.repo.keys(user_id=user.id if user is not None else None)
        names = await self.repo.user_names(sorted({r.user_id for r in rows}))
        return [ApiKeyPublic.from_row(r, user=names.get(r.user_id, "?")) for r in rows]

    async def revoke(self, key_id: str) -> None:
        """The key stops working at once; KeyNotFound if no live key has this id."""
        key_id = key_id.removeprefix(PREFIX).split("_", 1)[0]
        if not await self.repo.revoke_key(key_id, when=utcnow()):
            raise KeyNotFound(f"No live key with id {key_id[:40]!r}.")

    async def verify(self, token: str) -> tuple[User, list[Scope]]:
        """The user and scopes of a presented key; AUTH_001 for anything but a live key."""
        key_id = token.removeprefix(PREFIX).split("_", 1)[0] if token.startswith(PREFIX) else ""
        row = await self.repo.key(key_id) if key_id else None
        if row is None or not hmac.compare_digest(row.secret_hash, _digest(token)):
            raise Unauthorized("The API key is not valid.")
        now = utcnow()
        if row.revoked_at is not None:
            raise Unauthorized("The API key was revoked.")
        if row.expires_at is not None and as_utc(row.expires_at) <= now:
            raise Unauthorized("The API key has expired.")
        user = await self.repo.user(row.user_id)
        if user is None or user.disabled:
            raise Unauthorized("The API key's user is disabled.")
        last = as_utc(row.last_used_at) if row.last_used_at is not None else None
        if last is None or now - last > timedelta(minutes=1):  # one write a minute at most
            await self.repo.touch_key(row.id, when=now)
        return user, list(row.scopes)
