"""Every router of the API, combined in one place: app.py includes `api_router`."""

from __future__ import annotations

from fastapi import APIRouter

from studyrag.api.routes import chat, documents, health, search, sse, ws

api_router = APIRouter()
for _router in (health.router, documents.router, search.router, chat.router, sse.router, ws.router):
    api_router.include_router(_router)
