"""The optional API key of /v1 in local mode: `Authorization: Bearer <STUDYRAG_API__KEY>`
when one is set. In multi-user mode /v1 takes users' keys like every route (auth/policy.py)."""

from __future__ import annotations

import hmac

from fastapi import Request

from studyrag.api.deps import ServicesDep
from studyrag.errors import Unauthorized


def require_api_key(request: Request, services: ServicesDep) -> None:
    """AUTH_001 (401) unless the server has no key or the request carries it."""
    key = services.settings.api.key
    if not key or services.auth.mode != "local":
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("This endpoint needs an API key, and the request has none.")
    # Constant time: the comparison must not tell how much of a guess was right.
    if not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise Unauthorized("The API key is wrong.")
