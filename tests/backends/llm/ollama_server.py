"""A real Ollama-compatible HTTP server for tests, on 127.0.0.1 with a free port.

It speaks the parts of Ollama's API StudyRAG uses (/api/version, /api/tags, /api/show,
/api/pull, /api/chat, /api/embed, /api/embeddings) over a real socket, served by uvicorn in a
background thread, so the real `ollama` client and real streaming are exercised.

    with running_ollama_server(token_delay=0.01) as base_url: ...
    with OllamaTestServer(drop_after=2) as server: server.url, server.requests["/api/chat"]

Answers are deterministic: /api/chat echoes the words of the last user message (or
`reply`), /api/embed returns hashed bag-of-words vectors (see `embed_text`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import uvicorn

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CREATED_AT = "2024-01-01T00:00:00Z"
# Fake speed: 10 ms per generated token, 1 ms per prompt token.
EVAL_NS_PER_TOKEN = 10_000_000
PROMPT_NS_PER_TOKEN = 1_000_000


@dataclass
class OllamaBehaviour:
    """What the fake Ollama does; tests may change fields while the server runs."""

    # Pulled models, full names ("name:tag"); a request for "x" matches "x:latest".
    models: list[str] = field(
        default_factory=lambda: ["llama3.2:latest", "nomic-embed-text:latest"]
    )
    token_delay: float = 0.0  # seconds before each streamed chat chunk
    drop_after: int | None = None  # close the connection after this many chat chunks
    reply: str | None = None  # a fixed answer instead of echoing the last user message
    embed_dims: int = 64
    version: str = "0.6.0-test"
    pull_steps: int = 4
    pullable: bool = True  # False: /api/pull streams Ollama's "file does not exist" error
    context_length: int = 8192
    # (status, message): /api/chat and /api/embed answer with this error.
    fail_with: tuple[int, str] | None = None
    # /api/embed requests with an input containing this word fail with 500 (a runner that
    # dies on one batch), the others are answered.
    fail_embed_containing: str | None = None


class _DropConnection(Exception):
    """Raised inside the ASGI app after the response started: uvicorn then closes the socket."""


class _QuietDrops(logging.Filter):
    """Keep uvicorn from logging the deliberate drops as application errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _DropConnection))


_QUIET_DROPS = _QuietDrops()


def embed_text(text: str, dims: int = 64) -> list[float]:
    """The server's embedding: a signed hashed bag of lower-cased words, L2-normalised."""
    vector = [0.0] * dims
    for word in re.findall(r"\w+", text.lower()):
        value = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        vector[value % dims] += 1.0 if (value >> 32) & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector] if norm else vector


def unused_port() -> int:
    """A port on 127.0.0.1 nothing listens on (for 'unreachable' tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _full_name(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


def _line(payload: dict[str, Any]) -> bytes:
    return (json.dumps(payload) + "\n").encode()


class OllamaTestServer:
    """The server; a context manager that starts it in a thread and stops it on exit."""

    def __init__(self, **behaviour: Any) -> None:
        self.behaviour = OllamaBehaviour(**behaviour)
        self.url = ""
        # Observations for assertions, written by the server thread.
        self.requests: Counter[str] = Counter()
        self.chat_requests: list[dict[str, Any]] = []
        self.disconnects = 0  # streams the client closed before the end
        self.dropped = 0  # streams the server cut on purpose (drop_after)
        self.completed_streams = 0
        self.failed_embeds = 0  # /api/embed requests failed on purpose
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> OllamaTestServer:
        logging.getLogger("uvicorn.error").addFilter(_QUIET_DROPS)  # idempotent
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self,
            lifespan="off",
            log_config=None,  # leave the test process's logging alone
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="ollama-test", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the Ollama test server did not start")
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll `predicate` until it holds or `timeout` seconds pass; return its last value."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    # --- ASGI --------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        self.requests[path] += 1
        routes: dict[tuple[str, str], Callable[[dict[str, Any], Receive, Send], Awaitable[None]]]
        routes = {
            ("GET", "/api/version"): self._version,
            ("GET", "/api/tags"): self._tags,
            ("POST", "/api/show"): self._show,
            ("POST", "/api/pull"): self._pull,
            ("POST", "/api/chat"): self._chat,
            ("POST", "/api/embed"): self._embed,
            ("POST", "/api/embeddings"): self._embeddings,
        }
        handler = routes.get((scope["method"], path))
        raw = await _read_body(receive)
        if handler is None:
            await _send_json(send, 404, {"error": f"{scope['method']} {path} not found"})
            return
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            await _send_json(send, 400, {"error": "invalid JSON"})
            return
        await handler(body, receive, send)

    def _known(self, model: str) -> bool:
        return _full_name(model) in {_full_name(m) for m in self.behaviour.models}

    async def _missing(self, send: Send, model: str) -> None:
        await _send_json(send, 404, {"error": f"model '{model}' not found"})

    async def _version(self, body: dict[str, Any], receive: Receive, send: Send) -> None:
        await _send_json(send, 200, {"version": self.behaviour.version})

    async def _tags(self, body: dict[str, Any], receive: Receive, send: Send) -> None:
        models = [
            {
                "name": name,
                "model": name,
                "modified_at": CREATED_AT,
                "size": 1_000_000 + len(name),
                "digest": hashlib.sha256(name.encode()).hexdigest(),
                "details": self._details(name),
            }
            for name in self.behaviour.models
        ]
        await _send_json(send, 200, {"models": models})

    def _details(self, name: str) -> dict[str, Any]:
        family = "nomic-bert" if "embed" in name else "llama"
        return {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": "3.2B",
            "quantization_level": "Q4_K_M",
        }

    async def _show(self, body: dict[str, Any], receive: Receive, send: Send) -> None:
        model = str(body.get("model", ""))
        if not self._known(model):
            await self._missing(send, model)
            return
        embedding = "embed" in model
        family = "nomic-bert" if embedding else "llama"
        await _send_json(
            send,
            200,
            {
                "modelfile": f"FROM {model}",
                "parameters": f"num_ctx {self.behaviour.context_length}",
                "template": "{{ .Prompt }}",
                "details": self._details(model),
                "model_info": {
                    "general.architecture": family,
                    f"{family}.context_length": self.behaviour.context_length,
                    f"{family}.embedding_length": self.behaviour.embed_dims,
                },
                "capabilities": ["embedding"] if embedding else ["completion"],
                "modified_at": CREATED_AT,
            },
        )

    async def _pull(self, body: dict[str, Any], receive: Receive, send: Send) -> None:
        model = str(body.get("model", ""))
        b = self.behaviour

        async def progress() -> AsyncIterator[bytes]:
            yield _line({"status": "pulling manifest"})
            if not b.pullable:
                yield _line({"error": "pull model manifest: file does not exist"})
                return
            digest = "sha256:" + hashlib.sha256(model.encode()).hexdigest()
            total = 1000
            for step in range(b.pull_steps + 1):
                completed = total * step // max(1, b.pull_steps)
                yield _line(
                    {
                        "status": f"pulling {digest[7:19]}",
                        "digest": digest,
                        "total": total,
                        "completed": completed,
                    }
                )
            yield _line({"status": "verifying sha256 digest"})
            yield _line({"status": "writing manifest"})
            if not self._known(model):
                b.models.append(_full_name(model))
            yield _line({"status": "success"})

        if body.get("stream", True):
            await self._stream(send, receive, progress())
            return
        last: dict[str, Any] = {}
        async for line in progress():
            last = json.loads(line)
        await _send_json(send, 500 if "error" in last else 200, last)

    def _answer(self, body: dict[str, Any]) -> tuple[list[str], str, int]:
        messages = body.get("messages") or []
        source = self.behaviour.reply
        if source is None:
            source = next(
                (m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), ""
            )
        words = source.split() or ["OK"]
        pieces = [w if i == 0 else f" {w}" for i, w in enumerate(words)]
        options = body.get("options") or {}
        limit = options.get("num_predict")
        done_reason = "stop"
        if isinstance(limit, int) and 0 <= limit < len(pieces):
            pieces, done_reason = pieces[:limit], "length"
        stops = options.get("stop") or []
        text = ""
        for i, piece in enumerate(pieces):
            if any(s in text + piece for s in stops):
                pieces, done_reason = pieces[:i], "stop"
                break
            text += piece
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        return pieces, done_reason, prompt_tokens

    def _final(self, model: str, content: str, reason: str, n: int, prompt: int) -> dict[str, Any]:
        eval_ns = max(1, n) * EVAL_NS_PER_TOKEN
        prompt_ns = max(1, prompt) * PROMPT_NS_PER_TOKEN
        return {
            "model": model,
            "created_at": CREATED_AT,
            "message": {"role": "assistant", "content": content},
            "done": True,
            "done_reason": reason,
            "total_duration": eval_ns + prompt_ns + 1_000_000,
            "load_duration": 1_000_000,
            "prompt_eval_count": prompt,
            "prompt_eval_duration": prompt_ns,
            "eval_count": n,
            "eval_duration": eval_ns,
        }

    async def _chat(self, body: dict[str, Any], receive: Receive, send: Send) -> None:
        model = str(body.get("model", ""))
        if not self._known(model):
            await self._missing(send, model)
            return
        if self.behaviour.fail_with is not None:
            status, message = self.behaviour.fail_with
            await _send_json(send, status, {"error": message})
            return
        self.chat_requests.append(body)
        pieces, reason, prompt = self._answer(body)
        if not body.get("stream", True):
            final = self._final(model, "".join(pieces), reason, len(pieces), prompt)
            await _send_json(send, 200, final)
            return

        async def chunks() -> AsyncIterator[bytes]:
            for piece in pieces:
                message = {"role": "assistant", "content": piece}
                yield _line(
                    {"model": model, "created_at": CREATED_AT, "message": message, "done": False}
                )
            yield _line(self._final(model, "", reason, len(pieces), prompt))

        await self._stream(send, receive, chunks(), droppable=True)

    async def _embed(self, body: dict[str, Any], receive: Receive, send: Send) -> None:
        model = str(body.get("model", ""))
        if not self._known(model):
            await self._missing(send, model)
            return
        if self.behaviour.fail_with is not None:
            status, message = self.behaviour.fail_with
            await _send_json(send, status, {"error": message})
            return
        raw = body.get("input", [])
        texts = [raw] if isinstance(raw, str) else list(raw)
        word = self.behaviour.fail_embed_containing
        if word is not None and any(word in t for t in texts):
            self.failed_embeds += 1
            await _send_json(send, 500, {"error": "llama runner process has terminated"})
            return
        dims = int(body.get("dimensions") or self.behaviour.embed_dims)
        await _send_json(
            send,
            200,
            {
                "model": model,
                "embeddings": [embed_text(t, dims) for t in texts],
                "total_duration": 1_000_000,
                "load_duration": 100_000,
                "prompt_eval_count": sum(len(t.split()) for t in texts),
            },
        )

    async def _embeddings(self, body: dict[str, Any], receive: Receive, send: Send) -> None:
        model = str(body.get("model", ""))
        if not self._known(model):
            await self._missing(send, model)
            return
        text = str(body.get("prompt", ""))
        await _send_json(send, 200, {"embedding": embed_text(text, self.behaviour.embed_dims)})

    async def _stream(
        self,
        send: Send,
        receive: Receive,
        lines: AsyncIterator[bytes],
        *,
        droppable: bool = False,
    ) -> None:
        """Send NDJSON lines; notice a client that disconnects; cut the socket on demand."""
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/x-ndjson")],
            }
        )
        disconnected = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()

        watcher = asyncio.create_task(watch())
        sent = 0
        try:
            async for line in lines:
                b = self.behaviour
                if droppable and b.drop_after is not None and sent >= b.drop_after:
                    self.dropped += 1
                    raise _DropConnection
                if droppable and b.token_delay:
                    await asyncio.sleep(b.token_delay)
                if disconnected.is_set():
                    self.disconnects += 1
                    return
                await send({"type": "http.response.body", "body": line, "more_body": True})
                sent += 1
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            self.completed_streams += 1
        finally:
            watcher.cancel()
            with suppress(asyncio.CancelledError):
                await watcher


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _send_json(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


@contextmanager
def running_ollama_server(**behaviour: Any) -> Iterator[str]:
    """Run an OllamaTestServer with `behaviour` (see OllamaBehaviour); yield its base URL."""
    with OllamaTestServer(**behaviour) as server:
        yield server.url
