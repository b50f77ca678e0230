"""An OpenAI-compatible chat server on a real socket that fails the way real servers do.

It is the fault being injected, not a stand-in for StudyRAG's own parts: raw HTTP/1.1 over
a socket on 127.0.0.1, so the real `openai` client (and its httpx transport, timeouts and
retries) meet a refused connection, a server that never answers, a stream that stalls and a
socket closed in the middle of a chunked stream.

    with FaultyOpenAIServer() as server:
        server.behaviour = Behaviour(drop_after=3)   # 3 SSE chunks, then the socket closes
        server.refuse()                              # nothing listens on the port any more
        server.listen()                              # the same port answers again

GET /v1/models always answers (one model, `faulty`); POST /v1/chat/completions streams
`reply` word by word (`stream: true` only, as StudyRAG asks).
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from dataclasses import dataclass
from typing import Any

MODEL = "faulty"
REPLY = (
    "Chlorophyll absorbs blue and red light and reflects green light, which is why leaves "
    "look green to us when we walk through a forest in summer."
)


@dataclass
class Behaviour:
    """What the next chat request meets; a test replaces it while the server runs."""

    reply: str = REPLY
    delay_headers: float = 0.0  # seconds of silence before the status line
    stall_after: int | None = None  # send this many chunks, then go silent for `stall`
    stall: float = 0.0
    drop_after: int | None = None  # send this many chunks, then close the socket mid-body


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        owner = self.server.owner
        try:
            method, path, body = _read_request(sock)
        except (OSError, ValueError):
            return
        if method == "GET" and path.endswith("/models"):
            listing = {
                "object": "list",
                "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "tests"}],
            }
            _send_json(sock, 200, listing)
            return
        if method != "POST" or not path.endswith("/chat/completions"):
            _send_json(sock, 404, {"error": {"message": f"{method} {path} not found"}})
            return
        owner.chat_requests += 1
        b = owner.behaviour
        if b.delay_headers and owner.stopping.wait(b.delay_headers):
            return
        request = json.loads(body or b"{}")
        sock.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        )
        words = b.reply.split()
        limit = int(request.get("max_tokens") or len(words))
        pieces = [w if i == 0 else f" {w}" for i, w in enumerate(words)][:limit]
        for sent, piece in enumerate(pieces):
            if b.drop_after is not None and sent >= b.drop_after:
                owner.dropped += 1
                # No terminating chunk: the client sees the body cut off, as when the
                # server process dies mid-answer.
                return
            if b.stall_after is not None and sent >= b.stall_after:
                owner.stalled += 1
                if owner.stopping.wait(b.stall):
                    return
            _send_chunk(sock, _event(_chunk(piece, None)))
            time.sleep(0.01)
        finish = "length" if limit < len(words) else "stop"
        _send_chunk(sock, _event(_chunk("", finish)))
        usage = {
            "prompt_tokens": 40,
            "completion_tokens": len(pieces),
            "total_tokens": 40 + len(pieces),
        }
        _send_chunk(sock, _event({**_chunk("", None), "choices": [], "usage": usage}))
        _send_chunk(sock, b"data: [DONE]\n\n")
        sock.sendall(b"0\r\n\r\n")
        owner.completed += 1


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    owner: FaultyOpenAIServer


class FaultyOpenAIServer:
    """The server; a context manager. `url` ends with /v1 (STUDYRAG_LLM__OPENAI_BASE_URL)."""

    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self.port = 0
        self.chat_requests = 0
        self.dropped = 0
        self.stalled = 0
        self.completed = 0
        self.stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def listening(self) -> bool:
        return self._server is not None

    def listen(self) -> None:
        """Accept connections on the port (the same one after refuse())."""
        self.stopping.clear()
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.owner = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def refuse(self) -> None:
        """Close the listening socket: connections are refused (ECONNREFUSED)."""
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FaultyOpenAIServer:
        self.listen()
        return self

    def __exit__(self, *exc: object) -> None:
        self.refuse()

    def normal(self) -> None:
        """Answer every request in full again."""
        self.behaviour = Behaviour()


def _read_request(sock: socket.socket) -> tuple[str, str, bytes]:
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise ValueError("closed before the headers ended")
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    length = int(headers.get("content-length") or 0)
    while len(body) < length:
        more = sock.recv(65536)
        if not more:
            break
        body += more
    sock.settimeout(None)
    return method, path, body


def _send_json(sock: socket.socket, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    sock.sendall(
        f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
        + body
    )


def _chunk(text: str, finish: str | None) -> dict[str, Any]:
    delta = {"role": "assistant", "content": text} if text else {}
    return {
        "id": "chatcmpl-fault",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


def _send_chunk(sock: socket.socket, data: bytes) -> None:
    sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")
