"""The ChatModel role: one typed stream of token deltas, then a final event with stats."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Self

from studyrag.errors import ContextTooLong

Role = Literal["system", "user", "assistant"]

# Chat templates add a few tokens per message (role markers, separators) around the text.
TOKENS_PER_MESSAGE = 4


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(slots=True)
class GenerationStats:
    """What one generation cost; stored with the assistant message."""

    model: str
    provider: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token: float | None = None  # seconds
    total_time: float = 0.0  # seconds
    tokens_per_second: float = 0.0
    # stop | length | cancelled | error
    finish_reason: str = "stop"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class TokenDelta:
    """A piece of generated text."""

    text: str
    type: Literal["token"] = "token"


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last event of every stream."""

    stats: GenerationStats
    type: Literal["end"] = "end"


StreamEvent = TokenDelta | StreamEnd


@dataclass(slots=True)
class Completion:
    text: str
    stats: GenerationStats


@dataclass(slots=True)
class ModelInfo:
    name: str
    size: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


class ChatModel(ABC):
    """Async chat backend. Closing the stream (aclose / break) stops generation."""

    provider: str = ""
    supports_streaming: bool = True

    @property
    @abstractmethod
    def model_name(self) -> str:
        """The model that answers."""

    @property
    @abstractmethod
    def context_window(self) -> int:
        """Tokens the model reads at most (prompt + answer)."""

    @abstractmethod
    def stream(
        self,
        messages: list[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.2,
        stop: list[str] | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """Token deltas, then exactly one StreamEnd. Raises ChatError subclasses."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes in this model (an estimate where no tokenizer is local)."""

    def count_message_tokens(self, messages: list[ChatMessage]) -> int:
        """Tokens a conversation takes: its texts plus the template's per-message overhead."""
        return sum(self.count_tokens(m.content) + TOKENS_PER_MESSAGE for m in messages)

    def check_context(self, prompt_tokens: int, max_tokens: int) -> None:
        """Raise ContextTooLong when the prompt plus the answer cannot fit context_window."""
        if prompt_tokens + max_tokens <= self.context_window:
            return
        raise ContextTooLong(
            f"The prompt takes {prompt_tokens} tokens and the answer up to {max_tokens}, "
            f"more than the model's {self.context_window}-token context; shorten the "
            "question, send fewer documents or raise STUDYRAG_LLM__N_CTX.",
            details={
                "prompt_tokens": prompt_tokens,
                "max_tokens": max_tokens,
                "context_window": self.context_window,
            },
        )

    async def complete(
        self,
        messages: list[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.2,
        stop: list[str] | None = None,
    ) -> Completion:
        """Non-streaming generation, built on stream()."""
        parts: list[str] = []
        stats: GenerationStats | None = None
        async for event in self.stream(
            messages, max_tokens=max_tokens, temperature=temperature, stop=stop
        ):
            if isinstance(event, TokenDelta):
                parts.append(event.text)
            else:
                stats = event.stats
        assert stats is not None, "a stream always ends with StreamEnd"
        return Completion(text="".join(parts), stats=stats)

    async def health_check(self) -> dict[str, Any]:
        """{'status': 'ok'|'unavailable', 'provider', 'model', ...}."""
        return {"status": "ok", "provider": self.provider, "model": self.model_name}

    async def list_models(self) -> list[ModelInfo]:
        """Models this backend can serve."""
        return [ModelInfo(name=self.model_name)]

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load the model / open the client."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release the model / close the client."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class RemoteChatModel(ChatModel):
    """A model behind a server's HTTP API: the window is the configured one and tokens are
    estimated (no tokenizer is local). Subclasses set `_settings`, `_model` and `_client`."""

    _settings: Any
    _model: str
    _client: Any

    @property
    def model_name(self) -> str:
        return self._model

    @property
    def context_window(self) -> int:
        # The wire protocol does not report it (Ollama gets it as num_ctx on every request):
        # the operator states it in the settings.
        return int(self._settings.n_ctx)

    def count_tokens(self, text: str) -> int:
        """An estimate of ~4 characters per token."""
        return math.ceil(len(text) / 4) if text else 0

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.close()
