"""ChatModelSlot: the chat model answers lease; a switch closes the old one after its last."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from studyrag.backends.llm.base import ChatModel

log = logging.getLogger(__name__)


class ChatModelSlot:
    """Holds the current chat model and counts the generations using each model.

    A switch makes the new model current at once: answers that start afterwards lease it,
    answers in flight keep the model they leased, and the old model is closed when the last
    of them ends (at once when none is running).
    """

    def __init__(self, model: ChatModel, *, owned: bool = False) -> None:
        self._current = model
        self._leases: dict[int, int] = {}
        # Models this slot must close: every model it switched to (the first one belongs to
        # whoever opened it, unless `owned`).
        self._owned: set[int] = {id(model)} if owned else set()

    @property
    def current(self) -> ChatModel:
        """The model a new answer gets."""
        return self._current

    def in_flight(self, model: ChatModel | None = None) -> int:
        """Generations running on `model` (default: all models)."""
        if model is None:
            return sum(self._leases.values())
        return self._leases.get(id(model), 0)

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[ChatModel]:
        """The current model, kept open until the block ends."""
        model = self._current
        key = id(model)
        self._leases[key] = self._leases.get(key, 0) + 1
        try:
            yield model
        finally:
            left = self._leases[key] - 1
            if left:
                self._leases[key] = left
            else:
                del self._leases[key]
                if model is not self._current:
                    await self._close(model)

    async def swap(self, model: ChatModel) -> ChatModel:
        """Make `model` (started) current; the old one closes after its last generation."""
        old, self._current = self._current, model
        self._owned.add(id(model))
        if old is not model and not self._leases.get(id(old)):
            await self._close(old)
        return old

    async def _close(self, model: ChatModel) -> None:
        # The first model is closed again by open_services at shutdown: every
        # ChatModel.aclose may be called twice, and its weights must not stay loaded till then.
        self._owned.discard(id(model))
        try:
            # Shielded: the answer whose end triggers the close may be being cancelled.
            await asyncio.shield(model.aclose())
        except Exception:
            log.exception("closing the chat model %s failed", model.model_name)
        log.info("closed the chat model %s (%s)", model.model_name, model.provider)

    async def aclose(self) -> None:
        """Close the current model if this slot switched to it."""
        if id(self._current) in self._owned:
            await self._close(self._current)
