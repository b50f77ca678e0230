"""The auth bundle the services hold: mode, users, keys, sessions, shares, access, setup."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets

from starlette.requests import HTTPConnection

from studyrag.auth.keys import ApiKeyService
from studyrag.auth.mode import AuthMode, resolve_mode
from studyrag.auth.policy import LOCAL, Access, Principal, authenticate
from studyrag.auth.sessions import SessionService
from studyrag.auth.shares import ShareService
from studyrag.auth.users import UserService
from studyrag.config import Settings
from studyrag.db.auth import AuthRepo
from studyrag.db.models import User
from studyrag.db.notebooks import NotebookRepo
from studyrag.db.session import Database
from studyrag.errors import SetupUnavailable
from studyrag.notebooks.service import NotebookService

log = logging.getLogger(__name__)

SETUP_STATE = "auth_setup_token"


class AuthService:
    """Everything about who a request is and what it may see."""

    def __init__(
        self, db: Database, settings: Settings, notebooks: NotebookService, *, bound_host: str
    ) -> None:
        self.repo = AuthRepo(db)
        self.mode: AuthMode
        self.mode, self.warning = resolve_mode(settings.auth.mode, bound_host)
        self.users = UserService(self.repo)
        self.keys = ApiKeyService(self.repo)
        self.sessions = SessionService(self.repo, days=settings.auth.session_days)
        self.shares = ShareService(self.repo)
        self.access = Access(self.repo, notebooks)
        self._state: NotebookRepo = notebooks.repo
        self.settings = settings

    async def authenticate(self, conn: HTTPConnection) -> Principal:
        """The request's principal: the local owner in local mode, else by key or cookie."""
        if self.mode == "local":
            return LOCAL
        return await authenticate(self, conn)

    async def start(self) -> str | None:
        """At server start: warn about a local mode on an open address; in multi-user mode,
        give the local owner's rows to the first admin, or (no user yet) make a one-time
        setup token for the first admin and return it."""
        if self.warning:
            log.warning("%s", self.warning)
        if self.mode != "multi-user":
            return None
        admin = await self.repo.first_admin()
        if admin is not None:
            await self.repo.claim_unowned(admin.id)
            return None
        if await self.repo.count_users():
            return None
        token = secrets.token_urlsafe(24)
        await self._state.set_state(SETUP_STATE, hashlib.sha256(token.encode()).hexdigest())
        return token

    async def setup(self, token: str, name: str, password: str) -> User:
        """Create the first admin with the setup link's token (used once)."""
        stored = await self._state.state(SETUP_STATE)
        digest = hashlib.sha256(token.encode()).hexdigest()
        if not stored or not hmac.compare_digest(stored, digest) or await self.repo.count_users():
            raise SetupUnavailable("This setup link is not valid (any more).")
        user = await self.users.create(name, password, is_admin=True)
        await self._state.clear_state(SETUP_STATE)
        return user
