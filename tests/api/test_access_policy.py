"""Every HTTP and WebSocket route declares exactly one access policy (auth/policy.py).

A new route without one fails here: its author has to say who may call it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.routing import Route

from studyrag.app import create_app
from studyrag.auth.policy import Policy

# FastAPI's own pages, which the documentation area owns (not routes of ours).
FRAMEWORK = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def policies(dependant: Dependant) -> list[Policy]:
    found = [d.call for d in dependant.dependencies if isinstance(d.call, Policy)]
    for sub in dependant.dependencies:
        found.extend(policies(sub))
    return found


def routes(items: list[Any]) -> Iterator[Any]:
    """Every route, through included routers (FastAPI keeps them as routers)."""
    for route in items:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from routes(included.routes)
        else:
            yield route


def test_every_route_declares_one_policy() -> None:
    app = create_app()
    missing: list[str] = []
    several: list[tuple[str, list[str]]] = []
    seen = 0
    for route in routes(app.routes):
        if isinstance(route, APIRoute | APIWebSocketRoute):
            seen += 1
            declared = {id(p): p for p in policies(route.dependant)}
            if not declared:
                missing.append(route.path)
            elif len(declared) > 1:
                several.append((route.path, sorted(p.name for p in declared.values())))
        elif isinstance(route, Route):
            assert route.path in FRAMEWORK, f"{route.path} is not an APIRoute: it has no policy"
    assert seen > 50
    assert not missing, f"routes without an access policy: {missing}"
    assert not several, f"routes with more than one policy: {several}"


def test_websocket_routes_are_walked() -> None:
    app = create_app()
    sockets = {r.path for r in routes(app.routes) if isinstance(r, APIWebSocketRoute)}
    assert sockets == {"/ws/chat/{conversation_id}", "/ws/notebooks/{notebook_id}"}
