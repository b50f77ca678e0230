"""Web login sessions: a random token in an HttpOnly cookie, kept only as its sha256."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from studyrag.db.auth import AuthRepo
from studyrag.db.models import User, utcnow
from studyrag.errors import Unauthorized
from studyrag.schemas.base import as_utc

COOKIE = "studyrag_session"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionService:
    """Log in, look up, log out."""

    def __init__(self, repo: AuthRepo, *, days: float) -> None:
        self.repo = repo
        self.lifetime = timedelta(days=days)

    async def start(self, user: User) -> str:
        """A new session for `user`: the cookie's value (never stored as such)."""
        token = secrets.token_urlsafe(32)
        await self.repo.add_session(
            _digest(token), user_id=user.id, expires_at=utcnow() + self.lifetime
        )
        return token

    async def user(self, token: str) -> User:
        """The user of a live session; AUTH_001 when it is unknown, expired or disabled."""
        found = await self.repo.session_user(_digest(token)) if token else None
        if found is None:
            raise Unauthorized("The login session is not valid; log in again.")
        session, user = found
        if as_utc(session.expires_at) <= utcnow() or user.disabled:
            await self.repo.delete_session(session.token_hash)
            raise Unauthorized("The login session has ended; log in again.")
        return user

    async def end(self, token: str) -> None:
        await self.repo.delete_session(_digest(token))
