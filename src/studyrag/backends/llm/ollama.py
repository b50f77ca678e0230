"""OllamaChatModel: chat through an Ollama server with the official `ollama` client."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import ollama
from pydantic import ValidationError

from studyrag.backends.llm.base import (
    ChatMessage,
    Completion,
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

# Everything the ollama client lets escape: its own errors, the builtin ConnectionError it
# raises for refused connections, raw httpx errors from streamed requests (which it does not
# wrap), and decoding errors on a malformed line.
_VENDOR_ERRORS: tuple[type[Exception], ...] = (
    ollama.ResponseError,
    ollama.RequestError,
    ConnectionError,
    httpx.HTTPError,
    httpx.StreamError,
    json.JSONDecodeError,
    ValidationError,
)

# Refused or unroutable connections should fail fast even when generation may take minutes.
_CONNECT_TIMEOUT = 5.0


class OllamaChatModel(RemoteChatModel):
    """Chat with a model served by Ollama; one HTTP client per instance."""

    provider = "ollama"

    def __init__(self, settings: LLMSettings, *, model: str | None = None) -> None:
        self._settings = settings
        self._model = model or settings.model
        self.url = settings.ollama_url.rstrip("/")
        timeout = httpx.Timeout(settings.timeout, connect=min(settings.timeout, _CONNECT_TIMEOUT))
        self._client = ollama.AsyncClient(host=self.url, timeout=timeout)
        self._models_cache: tuple[float, list[ModelInfo]] | None = None

    # --- server and models -------------------------------------------------------------------
    async def health_check(self) -> dict[str, Any]:
        """Ollama's version and whether the configured model is pulled; never raises."""
        report: dict[str, Any] = {"provider": self.provider, "model": self._model, "url": self.url}
        try:
            version = await _server_version(self._client)
            report["version"] = version
            available = await self.model_exists()
        except _VENDOR_ERRORS as exc:
            return {**report, "status": "unavailable", "error": self._translate(exc).to_dict()}
        except ChatError as exc:
            return {**report, "status": "unavailable", "error": exc.to_dict()}
        if not available:
            return {**report, "status": "unavailable", "error": self._not_found().to_dict()}
        return {**report, "status": "ok"}

    async def list_models(self) -> list[ModelInfo]:
        """Pulled models, cached for `models_cache_ttl` seconds."""
        now = time.monotonic()
        if self._models_cache and now - self._models_cache[0] < self._settings.models_cache_ttl:
            return list(self._models_cache[1])
        try:
            response = await self._client.list()
        except _VENDOR_ERRORS as exc:
            raise self._translate(exc) from exc
        models = [_model_info(entry) for entry in response.models]
        self._models_cache = (now, models)
        return list(models)

    async def model_exists(self, name: str | None = None) -> bool:
        """Whether `name` (default: the configured model) is pulled; `x` matches `x:latest`."""
        wanted = _full_name(name or self._model)
        return any(_full_name(info.name) == wanted for info in await self.list_models())

    async def validate_model(self, name: str | None = None) -> None:
        """Raise ModelNotFound, with the pull command, unless the model is pulled."""
        if not await self.model_exists(name):
            raise self._not_found(name)

    async def show(self, name: str | None = None) -> dict[str, Any]:
        """Ollama's description of a model: details, parameters, template, model_info."""
        model = name or self._model
        try:
            response = await self._client.show(model)
        except _VENDOR_ERRORS as exc:
            raise self._translate(exc, model=model) from exc
        return response.model_dump(mode="json", by_alias=True, exclude_none=True)

    async def pull_model(self, name: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """Pull a model, yielding progress as {status, completed, total}."""
        model = name or self._model
        progress: AsyncIterator[ollama.ProgressResponse] | None = None
        try:
            progress = await self._client.pull(model, stream=True)
            async for step in progress:
                yield {"status": step.status, "completed": step.completed, "total": step.total}
        except _VENDOR_ERRORS as exc:
            raise self._translate(exc, model=model, pulling=True) from exc
        finally:
            await _aclose(progress)
            self._models_cache = None

    # --- generation --------------------------------------------------------------------------
    async def stream(
        self,
        messages: list[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.2,
        stop: list[str] | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """Stream /api/chat; closing this iterator closes the HTTP response."""
        # Ollama silently drops the start of a prompt longer than num_ctx: refuse it instead.
        self.check_context(self.count_message_tokens(messages), max_tokens)
        started = time.perf_counter()
        first: float | None = None
        pieces = 0
        final: ollama.ChatResponse | None = None
        chunks: AsyncIterator[ollama.ChatResponse] | None = None
        try:
            chunks = await self._client.chat(
                model=self._model,
                messages=_wire(messages),
                stream=True,
                options=self._options(max_tokens, temperature, stop),
            )
            async for chunk in chunks:
                text = chunk.message.content or ""
                if text:
                    if first is None:
                        first = time.perf_counter() - started
                    pieces += 1
                    yield TokenDelta(text)
                if chunk.done:
                    final = chunk
                    break
        except _VENDOR_ERRORS as exc:
            raise self._translate(exc, model=self._model, streaming=True) from exc
        finally:
            # Closing the client's generator exits its `async with stream(...)`, which closes
            # the response and so the request: Ollama stops generating.
            await _aclose(chunks)
        if final is None:
            raise GenerationFailed(
                f"Ollama at {self.url} ended the answer without its final message; "
                "check the Ollama logs and try again.",
                details={"model": self._model},
            )
        yield StreamEnd(self._stats(final, started, first, pieces))

    async def complete(
        self,
        messages: list[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.2,
        stop: list[str] | None = None,
    ) -> Completion:
        """One non-streaming /api/chat request."""
        self.check_context(self.count_message_tokens(messages), max_tokens)
        started = time.perf_counter()
        try:
            response = await self._client.chat(
                model=self._model,
                messages=_wire(messages),
                stream=False,
                options=self._options(max_tokens, temperature, stop),
            )
        except _VENDOR_ERRORS as exc:
            raise self._translate(exc, model=self._model) from exc
        text = response.message.content or ""
        return Completion(text=text, stats=self._stats(response, started, None, 0))

    # --- helpers -----------------------------------------------------------------------------
    def _options(
        self, max_tokens: int, temperature: float, stop: list[str] | None
    ) -> dict[str, Any]:
        options: dict[str, Any] = {
            "num_predict": max_tokens,
            "num_ctx": self._settings.n_ctx,
            "temperature": temperature,
            "seed": self._settings.seed,
            "repeat_penalty": self._settings.repeat_penalty,
            "frequency_penalty": self._settings.frequency_penalty,
            "presence_penalty": self._settings.presence_penalty,
        }
        if stop:
            options["stop"] = list(stop)
        return options

    def _stats(
        self,
        final: ollama.ChatResponse,
        started: float,
        first: float | None,
        pieces: int,
    ) -> GenerationStats:
        total = time.perf_counter() - started
        completion = final.eval_count if final.eval_count is not None else pieces
        eval_seconds = (final.eval_duration or 0) / 1e9
        # Ollama measures decoding alone; fall back to the wall clock when it does not say.
        seconds = eval_seconds if eval_seconds > 0 else total
        return GenerationStats(
            model=self._model,
            provider=self.provider,
            prompt_tokens=final.prompt_eval_count or 0,
            completion_tokens=completion,
            time_to_first_token=first,
            total_time=total,
            tokens_per_second=completion / seconds if seconds > 0 else 0.0,
            finish_reason=final.done_reason or "stop",
        )

    def _not_found(self, name: str | None = None) -> ModelNotFound:
        model = name or self._model
        return ModelNotFound(
            f"Model '{model}' is not available in Ollama at {self.url}; pull it with "
            f"`ollama pull {model}` or `studyrag models pull {model}`.",
            details={"model": model, "pull_command": f"ollama pull {model}"},
        )

    def _translate(
        self,
        exc: Exception,
        *,
        model: str | None = None,
        streaming: bool = False,
        pulling: bool = False,
    ) -> ChatError:
        model = model or self._model
        details = {"provider": self.provider, "url": self.url, "model": model}
        if isinstance(exc, ConnectionError | httpx.ConnectError | httpx.ConnectTimeout):
            return LLMUnavailable(
                f"Ollama is not reachable at {self.url}; start it with `ollama serve` "
                "or set STUDYRAG_LLM__PROVIDER=llamacpp.",
                details=details,
            )
        if isinstance(exc, ollama.ResponseError):
            message = str(exc.error)
            if pulling:
                return ModelNotFound(
                    f"Ollama could not pull '{model}': {message}. Check the name on "
                    f"https://ollama.com/library, then run `ollama pull <name>`.",
                    details=details,
                )
            if exc.status_code == 404 or "not found" in message.lower():
                return self._not_found(model)
            if "context" in message.lower():
                return ContextTooLong(
                    f"Ollama rejected the prompt: {message}. Shorten the question, "
                    "send fewer documents or raise STUDYRAG_LLM__N_CTX.",
                    details=details,
                )
            return GenerationFailed(
                f"Ollama failed to answer: {message}; check the Ollama logs and try again.",
                details={**details, "status_code": exc.status_code},
            )
        if isinstance(exc, httpx.TimeoutException):
            return GenerationFailed(
                f"Ollama at {self.url} did not answer within {self._settings.timeout:g} s; "
                "raise STUDYRAG_LLM__TIMEOUT or use a smaller model.",
                details=details,
            )
        if isinstance(exc, httpx.TransportError | httpx.StreamError) and streaming:
            return GenerationFailed(
                f"The connection to Ollama at {self.url} dropped before the answer was "
                "complete; check that Ollama is still running and try again.",
                details=details,
            )
        if isinstance(exc, httpx.TransportError):
            return LLMUnavailable(
                f"Ollama at {self.url} closed the connection ({exc}); restart it with "
                "`ollama serve` or set STUDYRAG_LLM__PROVIDER=llamacpp.",
                details=details,
            )
        return GenerationFailed(
            f"Ollama sent a response StudyRAG cannot read ({type(exc).__name__}: {exc}); "
            "upgrade Ollama or the `ollama` package.",
            details=details,
        )


async def probe_ollama(url: str, *, wait: float = 1.0) -> str | None:
    """Ollama's version when a server answers at `url` within `wait` seconds, else None."""
    async with ollama.AsyncClient(host=url, timeout=wait) as client:
        try:
            return await _server_version(client)
        except _VENDOR_ERRORS:
            return None


def probe_ollama_sync(url: str, *, wait: float = 1.0) -> str | None:
    """probe_ollama for synchronous callers (start-up code outside an event loop)."""
    with ollama.Client(host=url, timeout=wait) as client:
        try:
            # The client has no public version(); _request_raw maps errors like its public calls.
            response = client._request_raw("GET", "/api/version")
            return str(response.json().get("version", ""))
        except _VENDOR_ERRORS:
            return None


async def _server_version(client: ollama.AsyncClient) -> str:
    # The client has no public version(); _request_raw maps errors like its public calls.
    response = await client._request_raw("GET", "/api/version")
    return str(response.json().get("version", ""))


async def _aclose(iterator: object) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


def _wire(messages: list[ChatMessage]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def _full_name(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


def _model_info(entry: Any) -> ModelInfo:
    details: dict[str, Any] = entry.details.model_dump(exclude_none=True) if entry.details else {}
    if entry.digest:
        details["digest"] = entry.digest
    if entry.modified_at:
        details["modified_at"] = entry.modified_at.isoformat()
    return ModelInfo(
        name=entry.model or "",
        size=int(entry.size) if entry.size is not None else None,
        details=details,
    )
