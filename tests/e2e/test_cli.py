"""The `studyrag` console script, run as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studyrag.config import Settings
from studyrag.services import open_services
from tests.e2e.test_ingest_search import write_corpus

pytestmark = pytest.mark.slow

EXE = str(Path(sys.executable).with_name("studyrag"))


def run(*args: str, data_dir: Path, check: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYRAG_")}
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run(
        [EXE, *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def lines(stdout: str) -> list[dict]:
    return [json.loads(x) for x in stdout.splitlines() if x.strip()]


def test_ingest_search_documents_json(tmp_path: Path) -> None:
    folder = write_corpus(tmp_path / "notes")
    (folder / "bad.xyz").write_text("nope")
    data = tmp_path / "data"
    proc = run("ingest", str(folder), "--json", data_dir=data)
    assert proc.returncode == 1, "a failed file must show in the exit code"
    rows = {r["filename"]: r for r in lines(proc.stdout)}
    assert set(rows) == {"biology.pdf", "history.md", "chemistry.txt", "bad.xyz"}
    for row in rows.values():
        assert set(row) >= {"document_id", "filename", "status", "error_code", "chunks"}
    assert rows["bad.xyz"]["error_code"] == "DOC_001"
    assert rows["biology.pdf"]["status"] == "completed" and rows["biology.pdf"]["chunks"] > 0

    again = run("ingest", str(folder / "history.md"), "--json", data_dir=data, check=True)
    assert lines(again.stdout)[0]["status"] == "duplicate"

    found = run(
        "search",
        "what does chlorophyll absorb",
        "--json",
        "--top-k",
        "3",
        data_dir=data,
        check=True,
    )
    hits = lines(found.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert set(hits[0]) >= {
        "rank",
        "score",
        "document_id",
        "filename",
        "page",
        "section",
        "chunk_id",
        "text",
    }
    assert (hits[0]["filename"], hits[0]["page"]) == ("biology.pdf", 2)

    human = run("search", "Bastille", "--mode", "lexical", data_dir=data, check=True)
    assert "history.md" in human.stdout and "French Revolution" in human.stdout

    listed = lines(run("documents", "list", "--json", data_dir=data, check=True).stdout)
    assert {d["filename"] for d in listed} == set(rows)
    pdf_id = rows["biology.pdf"]["document_id"]
    shown = lines(run("documents", "show", pdf_id, "--json", data_dir=data, check=True).stdout)
    assert shown[0]["metadata"]["title"] == "Plant Biology Notes"
    assert {c["page"] for c in shown[0]["chunk_locations"]} == {1, 2, 3}

    reindexed = lines(
        run("documents", "reindex", pdf_id, "--json", data_dir=data, check=True).stdout
    )
    assert reindexed[0]["status"] == "completed"
    run("documents", "delete", pdf_id, "--json", data_dir=data, check=True)
    after = lines(run("search", "chlorophyll", "--json", data_dir=data, check=True).stdout)
    assert all(h["filename"] != "biology.pdf" for h in after)

    missing = run("documents", "show", "nope", "--json", data_dir=data)
    assert missing.returncode == 1
    assert lines(missing.stdout)[0]["error_code"] == "DOC_004"


def test_empty_query_is_search_001(tmp_path: Path) -> None:
    proc = run("search", "  ", "--json", data_dir=tmp_path / "data")
    assert proc.returncode == 1
    assert lines(proc.stdout)[0]["error_code"] == "SEARCH_001"
    human = run("search", "", data_dir=tmp_path / "data")
    assert "SEARCH_001" in human.stderr


def test_progress_bar_and_summary(tmp_path: Path) -> None:
    proc = run("ingest", str(write_corpus(tmp_path / "notes")), data_dir=tmp_path / "data")
    assert proc.returncode == 0, proc.stderr
    assert "3 ingested, 0 already present, 0 failed" in proc.stderr
    assert "✓ biology.pdf" in proc.stdout


def test_sigkill_mid_ingestion_leaves_nothing_half_indexed(tmp_path: Path) -> None:
    folder = tmp_path / "big"
    folder.mkdir()
    para = "Cell biology paragraph {i} of part {n}: membranes, proteins, transport. "
    for n in range(4):
        (folder / f"part{n}.md").write_text(
            "\n\n".join(f"## Section {i}\n\n" + para.format(i=i, n=n) * 6 for i in range(400))
        )
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYRAG_")}
    proc = subprocess.Popen(
        [EXE, "ingest", str(folder), "--json", "--data-dir", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    db = data / "studyrag.db"
    deadline = time.monotonic() + 240
    try:
        # Kill once one document is done and the next one is in flight.
        while time.monotonic() < deadline:
            if db.exists():
                try:
                    with sqlite3.connect(db, timeout=1) as conn:
                        status = dict(
                            conn.execute("SELECT status, count(*) FROM documents GROUP BY status")
                        )
                except sqlite3.Error:
                    status = {}
                if status.get("completed", 0) >= 1 and status.get("processing", 0) >= 1:
                    break
            assert proc.poll() is None, "ingestion finished before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("never saw a document in processing")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    async def check() -> None:
        async with open_services(Settings(data_dir=data)) as services:
            docs, _ = await services.documents.list()
            assert {d.status for d in docs} <= {"completed", "failed"}
            assert any(d.status == "failed" and d.error_code == "DOC_005" for d in docs)
            from tests.e2e.test_ingest_search import counts

            for d in docs:
                expected = d.chunk_count if d.status == "completed" else 0
                assert await counts(services, d.id) == (expected,) * 3, d.filename
            total_vectors = await services.vectors.count()
            assert total_vectors == sum(d.chunk_count for d in docs if d.status == "completed")

    asyncio.run(check())

    # Ingesting again completes what was interrupted.
    again = run("ingest", str(folder), "--json", data_dir=data)
    assert again.returncode == 0
    assert {r["status"] for r in lines(again.stdout)} <= {"completed", "duplicate"}
