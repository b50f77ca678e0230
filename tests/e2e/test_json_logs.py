"""`studyrag serve` with STUDYRAG_LOG__FORMAT=json: every request line has its id, route,
status and duration; the memory watch warns past its threshold."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.test_cli import EXE, cli_env

pytestmark = pytest.mark.slow


def test_json_logs_of_a_real_server(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "server.log"
    env = cli_env(
        STUDYRAG_LOG__FORMAT="json",
        # Any real process is over this share of the machine: the watch must warn.
        STUDYRAG_LOG__MEMORY_WARN_RATIO="0.0001",
        STUDYRAG_LLM__N_THREADS="2",
    )
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [EXE, "serve", "--port", str(port), "--data-dir", str(tmp_path / "data")],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            env=env,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 180
            while True:
                try:
                    if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.5)
            ok = httpx.get(f"{base}/api/notebooks", headers={"X-Request-ID": "req-json-1"})
            assert ok.status_code == 200
            missing = httpx.get(
                f"{base}/api/documents/nope", headers={"X-Request-ID": "req-json-2"}
            )
            assert missing.status_code == 404
        finally:
            proc.terminate()
            proc.wait(60)
    records: list[dict[str, Any]] = []
    for line in log_path.read_text().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    by_id = {r["request_id"]: r for r in records if r.get("logger") == "studyrag.access"}
    first = by_id["req-json-1"]
    assert (first["method"], first["route"], first["path"]) == (
        "GET",
        "/api/notebooks",
        "/api/notebooks",
    )
    assert first["status"] == 200 and first["level"] == "INFO"
    assert isinstance(first["duration_ms"], float) and first["duration_ms"] >= 0
    second = by_id["req-json-2"]
    assert (second["route"], second["status"]) == ("/api/documents/{document_id}", 404)
    # Every request line is there: the health polls too, each with its own id.
    health = [r for r in records if r.get("route") == "/health"]
    assert health and all(r["request_id"] for r in health)
    # uvicorn's own lines come through the same JSON handler.
    assert any(r["logger"].startswith("uvicorn") for r in records)
    warnings = [r for r in records if r["logger"] == "studyrag.observability.memory"]
    assert warnings and warnings[0]["level"] == "WARNING"
    assert warnings[0]["memory_used_bytes"] > 0 and warnings[0]["memory_limit_bytes"] > 0
