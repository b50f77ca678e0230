"""Users, API keys, sessions and shares as the HTTP API and the CLI's --json show them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from studyrag.auth.passwords import MAX_PASSWORD_CHARS
from studyrag.db.models import ApiKey, User
from studyrag.schemas.base import PublicModel, UTCDateTime

Scope = Literal["read", "chat", "admin"]
ShareRole = Literal["viewer", "editor"]
USER_NAME_MAX = 64
KEY_NAME_MAX = 100


class UserPublic(PublicModel):
    id: str
    name: str
    is_admin: bool
    disabled: bool
    created_at: UTCDateTime

    @classmethod
    def from_row(cls, row: User) -> UserPublic:
        return cls(
            id=row.id,
            name=row.name,
            is_admin=row.is_admin,
            disabled=row.disabled,
            created_at=row.created_at,
        )


class ApiKeyPublic(PublicModel):
    """A key as listed: never its secret, which only its creation shows."""

    id: str
    user: str
    name: str
    scopes: list[Scope]
    created_at: UTCDateTime
    expires_at: UTCDateTime | None = None
    revoked_at: UTCDateTime | None = None
    last_used_at: UTCDateTime | None = None

    @classmethod
    def from_row(cls, row: ApiKey, *, user: str) -> ApiKeyPublic:
        return cls(
            id=row.id,
            user=user,
            name=row.name,
            scopes=list(row.scopes),
            created_at=row.created_at,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
            last_used_at=row.last_used_at,
        )


class ApiKeyCreated(ApiKeyPublic):
    """The one answer that carries the key itself: it is stored only as a hash."""

    key: str


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=USER_NAME_MAX)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_CHARS)


class SetupRequest(LoginRequest):
    """POST /api/auth/setup: the first admin, with the token of the one-time setup link."""

    token: str = Field(min_length=1, max_length=200)


class MePublic(PublicModel):
    """GET /api/auth/me: who the request is, in which mode, with which scopes."""

    mode: Literal["local", "multi-user"]
    user: UserPublic | None
    scopes: list[Scope]
    via: Literal["local", "session", "key"]


class ShareCreate(BaseModel):
    """POST /api/notebooks/{id}/shares: a user name, or "*" for everyone on the server."""

    model_config = ConfigDict(extra="forbid")

    user: str = Field(min_length=1, max_length=USER_NAME_MAX)
    role: ShareRole


class ShareRemove(BaseModel):
    """DELETE /api/notebooks/{id}/shares: whose share goes (`role` is accepted, not needed)."""

    model_config = ConfigDict(extra="forbid")

    user: str = Field(min_length=1, max_length=USER_NAME_MAX)
    role: ShareRole | None = None


class SharePublic(PublicModel):
    notebook_id: str
    user: str
    role: ShareRole
    created_at: UTCDateTime


class ShareList(PublicModel):
    items: list[SharePublic]
