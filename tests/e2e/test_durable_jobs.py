"""A real `studyrag serve` SIGKILLed in the middle of an upload job finishes it after restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from studyrag import local_server
from tests.conftest import free_port

pytestmark = pytest.mark.slow

EXE = str(Path(sys.executable).with_name("studyrag"))


@contextmanager
def serve(data_dir: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYRAG_")}
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [EXE, "serve", "--port", str(port), "--data-dir", str(data_dir)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "studyrag serve did not start"
            time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def studyrag(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """A CLI command on `data_dir`, to completion."""
    return subprocess.run(
        [EXE, *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if not k.startswith("STUDYRAG_")},
    )


def test_sigkill_mid_job_then_restart_completes_the_document(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    log = tmp_path / "serve.log"
    big = "\n\n".join(
        f"Note {i}: observation {i} of the survey records comet{i} near star {i % 89}."
        for i in range(2000)
    )
    with serve(data_dir, port, log) as proc:
        base = f"http://127.0.0.1:{port}"
        assert local_server.find(data_dir) == base  # CLI commands can use this server
        nb = httpx.post(f"{base}/api/notebooks", json={"name": "Survey"}).json()
        accepted = httpx.post(
            f"{base}/api/notebooks/{nb['id']}/documents",
            files=[("files", ("survey.txt", big.encode()))],
            timeout=60,
        ).json()
        job_id = accepted["job_id"]
        doc_id = accepted["documents"][0]["document_id"]
        deadline = time.monotonic() + 120
        while httpx.get(f"{base}/api/documents/{doc_id}").json()["step"] != "embedding":
            assert time.monotonic() < deadline, "the document never reached embedding"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert local_server.find(data_dir) is None  # its record names a dead process

    with serve(data_dir, port, log):
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        while True:
            job = httpx.get(f"{base}/api/jobs/{job_id}").json()
            if job["status"] in ("completed", "failed", "cancelled"):
                break
            assert time.monotonic() < deadline, job
            time.sleep(0.5)
        assert job["status"] == "completed", job
        doc = httpx.get(f"{base}/api/documents/{doc_id}").json()
        assert (doc["status"], doc["step"], doc["progress"]) == ("completed", "completed", 100.0)
        # Every chunk once: the interrupted attempt left nothing behind.
        assert len(doc["chunks"]) == doc["chunk_count"] > 10
        assert [c["index"] for c in doc["chunks"]] == list(range(doc["chunk_count"]))
        hits = httpx.post(
            f"{base}/api/search",
            json={"query": "comet1999", "notebook_id": nb["id"], "mode": "lexical"},
        ).json()["results"]
        assert hits and hits[0]["document_id"] == doc_id and "comet1999" in hits[0]["text"]
        # The CLI asks this server instead of loading the models itself.
        cli = studyrag(
            "search", "comet1999", "-n", "Survey", "--mode", "lexical", data_dir=data_dir
        )
        assert cli.returncode == 0, cli.stderr
        assert "survey.txt" in cli.stdout and f"by the server at {base}" in cli.stdout
        # Ingesting beside the server goes through it (vectors this process wrote would
        # stay invisible to its searches): the server's own search finds the new file.
        note = tmp_path / "extra.md"
        note.write_text("# Extra\n\nComet ninety-nine was seen twice over the harbour.")
        bad = tmp_path / "broken.pdf"
        bad.write_bytes(b"%PDF-1.4 not really")
        added = studyrag("ingest", str(note), str(bad), "-n", "Survey", data_dir=data_dir)
        assert added.returncode == 1, added.stderr  # one file failed, and says why
        assert "✓ extra.md" in added.stdout and "✗ broken.pdf" in added.stdout, added.stdout
        said = " ".join(added.stderr.split())
        assert "1 ingested" in said and "1 failed" in said, said
        assert f"ingested by the server at {base}" in said
        names = {
            d["filename"]: d["status"]
            for d in httpx.get(f"{base}/api/notebooks/{nb['id']}/documents").json()["items"]
        }
        assert names == {"survey.txt": "completed", "extra.md": "completed", "broken.pdf": "failed"}
        found = httpx.post(
            f"{base}/api/search",
            json={"query": "comet seen over the harbour", "notebook_id": nb["id"]},
        ).json()
        assert found["results"][0]["filename"] == "extra.md", found
        again = studyrag("ingest", str(note), "-n", "Survey", data_dir=data_dir)
        assert again.returncode == 0 and "0 ingested, 1 already present" in again.stderr
        asked = studyrag(
            "ask",
            "What does note 7 record?",
            "-n",
            "Survey",
            "--max-tokens",
            "8",
            data_dir=data_dir,
        )
        assert asked.returncode == 0, asked.stderr
        assert f"answered by the server at {base}" in asked.stdout
        convs = httpx.get(f"{base}/api/chat/conversations", params={"notebook_id": nb["id"]})
        assert len(convs.json()["items"]) == 1  # the server stored the CLI's question
    assert "requeued" in log.read_text()
    assert not (data_dir / local_server.FILENAME).exists()  # withdrawn on a clean stop
