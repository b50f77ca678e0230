"""Logging in over HTTP: login and logout (the session cookie), who am I, first-admin setup."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from studyrag.api.deps import PublicDep, ServicesDep, SignedInDep
from studyrag.auth.sessions import COOKIE
from studyrag.db.models import User
from studyrag.errors import InvalidAuthRequest
from studyrag.schemas.auth import LoginRequest, MePublic, SetupRequest, UserPublic
from studyrag.services import Services

router = APIRouter(prefix="/api/auth", tags=["auth"])


@router.get("/me")
async def me(principal: SignedInDep, services: ServicesDep) -> MePublic:
    """Who this request is: its user (none in local mode), scopes and how it authenticated."""
    user = await services.auth.repo.user(principal.user_id) if principal.user_id else None
    return MePublic(
        mode=services.auth.mode,
        user=UserPublic.from_row(user) if user is not None else None,
        scopes=sorted(principal.scopes),  # type: ignore[arg-type]
        via=principal.via,  # type: ignore[arg-type]
    )


@router.post("/login")
async def login(
    body: LoginRequest, request: Request, response: Response, services: ServicesDep, _: PublicDep
) -> UserPublic:
    """Check the name and password (AUTH_003) and set the session cookie."""
    _multi_user(services)
    await _throttle(services, request)
    user = await services.auth.users.authenticate(body.name, body.password)
    await _start_session(services, user, request, response)
    return UserPublic.from_row(user)


@router.post("/logout", status_code=204)
async def logout(request: Request, response: Response, services: ServicesDep, _: PublicDep) -> None:
    """End this browser's session (if any) and clear its cookie."""
    token = request.cookies.get(COOKIE)
    if token:
        await services.auth.sessions.end(token)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax")


@router.post("/setup", status_code=201)
async def setup(
    body: SetupRequest, request: Request, response: Response, services: ServicesDep, _: PublicDep
) -> UserPublic:
    """Create the first admin with the one-time setup link's token, and log them in."""
    _multi_user(services)
    await _throttle(services, request)
    user = await services.auth.setup(body.token, body.name, body.password)
    await _start_session(services, user, request, response)
    return UserPublic.from_row(user)


def _multi_user(services: Services) -> None:
    if services.auth.mode != "multi-user":
        raise InvalidAuthRequest(
            "This server runs in local mode: there is nothing to log in to.",
            hint="Set STUDYRAG_AUTH__MODE=multi-user to have accounts.",
        )


async def _throttle(services: Services, request: Request) -> None:
    """RATE_003 past LOGIN_ATTEMPTS attempts from one address in LOGIN_MINUTES (auth/quotas.py,
    shared by every worker): guessing passwords stays slow."""
    await services.limits.login(request.client.host if request.client else "unknown")


async def _start_session(
    services: Services, user: User, request: Request, response: Response
) -> None:
    token = await services.auth.sessions.start(user)
    secure = request.url.scheme == "https" or services.settings.auth.secure_cookies
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(services.auth.sessions.lifetime.total_seconds()),
        path="/",
        httponly=True,
        samesite="lax",
        secure=secure,
    )
