"""OpenAIChatModel: any OpenAI-compatible chat server (vLLM, llama.cpp server, LM Studio, ...)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import openai
from openai.types.chat import (
    ChatCompletionChunk,
    ChatCompletionMessageParam,
    ChatCompletionStreamOptionsParam,
)

from studyrag.backends.llm.base import (
    ChatMessage,
    GenerationStats,
    ModelInfo,
    RemoteChatModel,
    StreamEnd,
    StreamEvent,
    TokenDelta,
)
from studyrag.config import LLMSettings
from studyrag.errors import (
    ChatError,
    ContextTooLong,
    GenerationFailed,
    LLMUnavailable,
    ModelNotFound,
)

# One retry: it reconnects when a pooled keep-alive connection was closed by the server. The
# client also retries a request that timed out, so a silent server costs (1 + retries) waits.
MAX_RETRIES = 1


class OpenAIChatModel(RemoteChatModel):
    """Chat through the OpenAI wire protocol; one `AsyncOpenAI` client per instance."""

    provider = "openai"

    def __init__(self, settings: LLMSettings, *, model: str | None = None) -> None:
        self._settings = settings
        self._model = model or settings.model
        self.base_url = settings.openai_base_url.rstrip("/")
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=settings.openai_api_key or "not-needed",
            timeout=settings.timeout,
            # One retry: it reconnects when a pooled keep-alive connection was closed by the
            # server, while a server that is down still fails within about a second. Retries
            # happen before any token is read, so they never duplicate text.
            max_retries=MAX_RETRIES,
        )
        # Servers that reject stream_options are remembered and asked without it.
        self._send_stream_options = True
        # llama.cpp's repeat_penalty is no OpenAI parameter: sent as an extra field (llama.cpp
        # server and LM Studio read it, others ignore it); a server that refuses it is
        # remembered and asked without it.
        self._send_repeat_penalty = settings.repeat_penalty != 1.0

    async def health_check(self) -> dict[str, Any]:
        """Whether the server answers GET /models; never raises."""
        report: dict[str, Any] = {
            "provider": self.provider,
            "model": self._model,
            "url": self.base_url,
        }
        try:
            models = await self.list_models()
        except ChatError as exc:
            return {**report, "status": "unavailable", "error": exc.to_dict()}
        return {**report, "status": "ok", "models": [m.name for m in models]}

    async def list_models(self) -> list[ModelInfo]:
        """The models the server lists at GET /models."""
        models: list[ModelInfo] = []
        try:
            async for entry in self._client.models.list():
                models.append(
                    ModelInfo(
                        name=entry.id,
                        details={"owned_by": entry.owned_by, "created": entry.created},
                    )
                )
        except openai.OpenAIError as exc:
            raise self._translate(exc) from exc
        return models

    async def stream(
        self,
        messages: list[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.2,
        stop: list[str] | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """Stream a chat completion; closing this iterator closes the HTTP response."""
        # Estimated (no local tokenizer), like the budget the chat engine built the prompt with;
        # llama.cpp's Python server would otherwise answer an oversized prompt with an empty
        # stream instead of an error.
        estimated_prompt = self.count_message_tokens(messages)
        self.check_context(estimated_prompt, max_tokens)
        started = time.perf_counter()
        response = await self._open(messages, max_tokens, temperature, stop)
        first: float | None = None
        pieces = 0
        finish: str | None = None
        usage: Any = None
        try:
            async with response:
                async for chunk in response:
                    if chunk.usage is not None:
                        usage = chunk.usage
                    for choice in chunk.choices:
                        text = choice.delta.content if choice.delta else None
                        if text:
                            if first is None:
                                first = time.perf_counter() - started
                            pieces += 1
                            yield TokenDelta(text)
                        if choice.finish_reason:
                            finish = choice.finish_reason
        except openai.OpenAIError as exc:
            raise self._translate(exc, streaming=True) from exc
        if finish is None and usage is None:
            raise GenerationFailed(
                f"The server at {self.base_url} ended the answer without saying why it stopped; "
                "check its log (a prompt longer than its context window does this on "
                "llama-cpp-python's server) and try again.",
                details={"provider": self.provider, "url": self.base_url, "model": self._model},
            )
        total = time.perf_counter() - started
        # Without include_usage support, count the deltas (servers send about one per token)
        # and keep the prompt estimate.
        completion = usage.completion_tokens if usage is not None else pieces
        prompt = usage.prompt_tokens if usage is not None else estimated_prompt
        yield StreamEnd(
            GenerationStats(
                model=self._model,
                provider=self.provider,
                prompt_tokens=prompt,
                completion_tokens=completion,
                time_to_first_token=first,
                total_time=total,
                tokens_per_second=completion / total if total > 0 else 0.0,
                finish_reason=finish or "stop",
            )
        )

    async def _open(
        self,
        messages: list[ChatMessage],
        max_tokens: int,
        temperature: float,
        stop: list[str] | None,
    ) -> openai.AsyncStream[ChatCompletionChunk]:
        wire: list[ChatCompletionMessageParam] = [
            {"role": m.role, "content": m.content}  # type: ignore[misc]
            for m in messages
        ]
        while True:
            options: ChatCompletionStreamOptionsParam | None = (
                {"include_usage": True} if self._send_stream_options else None
            )
            try:
                return await self._client.chat.completions.create(
                    model=self._model,
                    messages=wire,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    seed=self._settings.seed,
                    stop=stop or openai.omit,
                    stream=True,
                    stream_options=options if options is not None else openai.omit,
                    frequency_penalty=self._settings.frequency_penalty or openai.omit,
                    presence_penalty=self._settings.presence_penalty or openai.omit,
                    extra_body=(
                        {"repeat_penalty": self._settings.repeat_penalty}
                        if self._send_repeat_penalty
                        else None
                    ),
                )
            except openai.BadRequestError as exc:
                if self._send_stream_options and "stream_options" in str(exc):
                    self._send_stream_options = False
                    continue
                if self._send_repeat_penalty and "repeat_penalty" in str(exc):
                    self._send_repeat_penalty = False
                    continue
                raise self._translate(exc) from exc
            except openai.OpenAIError as exc:
                raise self._translate(exc) from exc

    def _translate(self, exc: openai.OpenAIError, *, streaming: bool = False) -> ChatError:
        details: dict[str, Any] = {
            "provider": self.provider,
            "url": self.base_url,
            "model": self._model,
        }
        if isinstance(exc, openai.APITimeoutError):
            return GenerationFailed(
                f"The server at {self.base_url} did not answer within "
                f"{self._settings.timeout:g} s, asked {MAX_RETRIES + 1} times; raise "
                "STUDYRAG_LLM__TIMEOUT or use a smaller model.",
                details=details,
            )
        if isinstance(exc, openai.APIConnectionError):
            if streaming:
                return GenerationFailed(
                    f"The connection to {self.base_url} dropped before the answer was complete; "
                    "check that the server is still running and try again.",
                    details=details,
                )
            return LLMUnavailable(
                f"The OpenAI-compatible server is not reachable at {self.base_url}; start it "
                "(for example `python -m llama_cpp.server --model <file.gguf>`), fix "
                "STUDYRAG_LLM__OPENAI_BASE_URL or set STUDYRAG_LLM__PROVIDER=llamacpp.",
                details=details,
            )
        if isinstance(exc, openai.NotFoundError):
            return ModelNotFound(
                f"Model '{self._model}' is not served at {self.base_url}; load it on the server "
                f"(for Ollama's /v1 endpoint: `ollama pull {self._model}`), or set "
                "STUDYRAG_LLM__MODEL to a name from GET /models and check that "
                "STUDYRAG_LLM__OPENAI_BASE_URL ends with /v1.",
                details={**details, "pull_command": f"ollama pull {self._model}"},
            )
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            return LLMUnavailable(
                f"The server at {self.base_url} rejected the API key; "
                "set STUDYRAG_LLM__OPENAI_API_KEY.",
                details=details,
            )
        message = _error_message(exc)
        if isinstance(exc, openai.BadRequestError) and "context" in message.lower():
            return ContextTooLong(
                f"The prompt does not fit the model's context window ({message}); shorten "
                "the question or send fewer documents.",
                details=details,
            )
        if isinstance(exc, openai.APIStatusError):
            details["status_code"] = exc.status_code
        return GenerationFailed(
            f"The server at {self.base_url} failed to answer: {message}; check its logs "
            "and try again.",
            details=details,
        )


def _error_message(exc: openai.OpenAIError) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
        if isinstance(body.get("message"), str):
            return str(body["message"])
    return str(exc)
