"""FakeChatModel: a deterministic ChatModel for tests of the layers above the LLM role."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from studyrag.backends.llm.base import (
    ChatMessage,
    ChatModel,
    GenerationStats,
    ModelInfo,
    StreamEnd,
    StreamEvent,
    TokenDelta,
)
from studyrag.errors import ChatError


class FakeChatModel(ChatModel):
    """Streams `script` (one delta per item) or, without a script, echoes the last user message.

    A token is a whitespace-separated word. Stats are measured, not invented, so upper layers
    can assert on them. `error` is raised after `fail_after` tokens to exercise error paths.
    """

    provider = "fake"

    def __init__(
        self,
        script: list[str] | None = None,
        delay: float = 0.0,
        *,
        model: str = "fake-model",
        n_ctx: int = 2048,
        error: ChatError | None = None,
        fail_after: int = 0,
    ) -> None:
        self.script = list(script) if script is not None else None
        self.delay = delay
        self.error = error
        self.fail_after = fail_after
        self._model = model
        self._n_ctx = n_ctx
        # What the layers above asked for, and how their streams ended: for assertions.
        self.calls: list[list[ChatMessage]] = []
        self.completed = 0
        self.cancelled = 0
        self.started = False
        self.closed = False

    @property
    def model_name(self) -> str:
        return self._model

    @property
    def context_window(self) -> int:
        return self._n_ctx

    def count_tokens(self, text: str) -> int:
        """Words in `text`: the fake's tokenizer."""
        return len(text.split())

    async def start(self) -> None:
        """Mark the fake as started."""
        self.started = True

    async def aclose(self) -> None:
        """Mark the fake as closed."""
        self.closed = True

    async def list_models(self) -> list[ModelInfo]:
        """The one fake model."""
        return [ModelInfo(name=self._model, details={"provider": self.provider})]

    def _pieces(self, messages: list[ChatMessage]) -> list[str]:
        if self.script is not None:
            return list(self.script)
        last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
        words = last_user.split()
        # Keep the spacing of a real detokenizer: a space between words, none at the end.
        return [word if i == 0 else f" {word}" for i, word in enumerate(words)]

    async def stream(
        self,
        messages: list[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.2,
        stop: list[str] | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """Yield the scripted or echoed pieces, then a StreamEnd with measured stats."""
        self.calls.append(list(messages))
        prompt_tokens = sum(self.count_tokens(m.content) for m in messages)
        self.check_context(prompt_tokens, max_tokens)
        started = time.perf_counter()
        first: float | None = None
        produced = 0
        text = ""
        finish = "stop"
        ended = False
        try:
            for piece in self._pieces(messages):
                if produced >= max_tokens:
                    finish = "length"
                    break
                if self.error is not None and produced >= self.fail_after:
                    raise self.error
                candidate = text + piece
                if stop and any(s in candidate for s in stop):
                    break
                if self.delay:
                    await asyncio.sleep(self.delay)
                else:
                    # Still yield to the loop so cancellation is observable even with no delay.
                    await asyncio.sleep(0)
                if first is None:
                    first = time.perf_counter() - started
                produced += 1
                text = candidate
                yield TokenDelta(piece)
            if self.error is not None:
                # A script shorter than `fail_after` still fails, at its end.
                raise self.error
            total = time.perf_counter() - started
            stats = GenerationStats(
                model=self._model,
                provider=self.provider,
                prompt_tokens=prompt_tokens,
                completion_tokens=produced,
                time_to_first_token=first,
                total_time=total,
                tokens_per_second=produced / total if total > 0 else 0.0,
                finish_reason=finish,
            )
            ended = True
            self.completed += 1
            yield StreamEnd(stats)
        except (GeneratorExit, asyncio.CancelledError):
            # Closed by the consumer before the end: what a "stop" button does.
            if not ended:
                self.cancelled += 1
            raise
