"""The `studyrag` console script, run as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from studyrag.config import Settings
from studyrag.services import open_services
from tests.e2e.test_ingest_search import write_corpus

pytestmark = pytest.mark.slow

EXE = str(Path(sys.executable).with_name("studyrag"))


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: no STUDYRAG_* of the caller, offline models."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYRAG_")}
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


def run(
    *args: str,
    data_dir: Path | None,
    check: bool = False,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `studyrag ARGS [--data-dir DIR]` to completion."""
    proc = subprocess.run(
        [EXE, *args, *(["--data-dir", str(data_dir)] if data_dir else [])],
        capture_output=True,
        text=True,
        env=env or cli_env(),
        cwd=cwd,
        timeout=300,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def lines(stdout: str) -> list[dict]:
    return [json.loads(x) for x in stdout.splitlines() if x.strip()]


def wait_until_in_flight(proc: subprocess.Popen[str] | subprocess.Popen[bytes], db: Path) -> None:
    """Return once one document is completed and another is being processed."""
    deadline = time.monotonic() + 240
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
                return
        assert proc.poll() is None, "ingestion finished before it could be stopped"
        time.sleep(0.05)
    pytest.fail("never saw a document in processing")


async def assert_nothing_half_indexed(data: Path) -> list[str]:
    """Completed documents are whole everywhere, the others have no chunk anywhere; statuses."""
    from tests.e2e.test_ingest_search import counts

    async with open_services(Settings(data_dir=data)) as services:
        docs, _ = await services.documents.list(limit=1000)
        for d in docs:
            expected = d.chunk_count if d.status == "completed" else 0
            assert await counts(services, d.id) == (expected,) * 3, d.filename
        completed = sum(d.chunk_count for d in docs if d.status == "completed")
        async with services.db.session() as s:
            rows = await s.execute(
                text("SELECT (SELECT count(*) FROM chunks), (SELECT count(*) FROM chunks_fts)")
            )
            assert tuple(rows.one()) == (completed, completed)
        assert await services.vectors.count() == completed
        return [d.status for d in docs]


def test_ingest_search_documents_json(tmp_path: Path) -> None:
    folder = write_corpus(tmp_path / "notes")
    (folder / "bad.xyz").write_text("nope")
    data = tmp_path / "data"
    proc = run("ingest", str(folder), "--json", data_dir=data)
    assert proc.returncode == 0, proc.stderr
    rows = {r["filename"]: r for r in lines(proc.stdout)}
    assert set(rows) == {"biology.pdf", "history.md", "chemistry.txt", "bad.xyz"}
    for row in rows.values():
        assert set(row) >= {"document_id", "filename", "status", "error_code", "chunks"}
    # Met in a folder, an unsupported file is skipped, not stored as a failed document...
    assert (rows["bad.xyz"]["status"], rows["bad.xyz"]["document_id"]) == ("skipped", None)
    assert rows["biology.pdf"]["status"] == "completed" and rows["biology.pdf"]["chunks"] > 0
    # ...named explicitly, it is an error, and the exit code says so.
    named = run("ingest", str(folder / "bad.xyz"), "--json", data_dir=data)
    assert named.returncode == 1, "a failed file must show in the exit code"
    assert (lines(named.stdout)[0]["status"], lines(named.stdout)[0]["error_code"]) == (
        "rejected",
        "DOC_001",
    )
    del rows["bad.xyz"]  # stored nowhere, either way

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
    folder = write_corpus(tmp_path / "notes")
    (folder / "slides.key").write_bytes(b"PK\x03\x04 Keynote")
    (folder / "deep").mkdir()
    (folder / "deep" / "data.xyz").write_text("nope")
    data = tmp_path / "data"
    proc = run("ingest", str(folder), data_dir=data)
    assert proc.returncode == 0, proc.stderr
    assert re.search(
        r"3 ingested, 0 already present, 0 failed, 2 skipped, \d+ chunks in [\d.]+ s", proc.stderr
    ), proc.stderr
    skipped = next(x for x in proc.stderr.splitlines() if x.startswith("skipped ("))
    assert skipped.startswith("skipped (not a type StudyRAG reads): ")
    assert sorted(skipped.split(": ", 1)[1].split(", ")) == ["1 .key", "1 .xyz"]
    assert f"library: {data}" in proc.stderr
    assert 'studyrag search "' in proc.stderr and 'studyrag ask "' in proc.stderr
    assert "3/3 files" in proc.stderr  # the bar's final state
    for name in ("biology.pdf", "history.md", "chemistry.txt"):
        assert f"✓ {name}" in proc.stdout
    assert "slides.key" not in proc.stdout
    listed = lines(run("documents", "list", "--json", data_dir=data, check=True).stdout)
    assert {d["filename"] for d in listed} == {"biology.pdf", "history.md", "chemistry.txt"}

    again = run("ingest", str(folder), data_dir=data)
    assert again.returncode == 0, again.stderr
    assert "0 ingested, 3 already present, 0 failed, 2 skipped, 0 chunks" in again.stderr
    assert "= history.md — unchanged, already ingested as history.md" in again.stdout

    (tmp_path / "empty").mkdir()
    nothing = run("ingest", str(tmp_path / "empty"), data_dir=data)
    assert nothing.returncode == 1 and "No files found" in nothing.stderr
    only_skipped = run("ingest", str(folder / "deep"), data_dir=data)
    assert only_skipped.returncode == 1
    assert "No file that can be ingested" in only_skipped.stderr


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
    try:
        # Kill once one document is done and the next one is in flight.
        wait_until_in_flight(proc, data / "studyrag.db")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    # The next start repairs it: what was in flight goes back to the queue (its original is
    # kept), with no chunk left anywhere.
    statuses = asyncio.run(assert_nothing_half_indexed(data))
    assert set(statuses) <= {"completed", "queued"} and "queued" in statuses

    # Ingesting again completes what was interrupted.
    again = run("ingest", str(folder), "--json", data_dir=data)
    assert again.returncode == 0
    assert {r["status"] for r in lines(again.stdout)} <= {"completed", "duplicate"}


def test_ctrl_c_stops_the_batch_and_rolls_back_what_was_in_flight(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    topics = ["enzymes", "glaciers", "sonnets", "tariffs", "neurons", "volcanoes", "treaties"]
    for i in range(400):
        topic = topics[i % len(topics)]
        (folder / f"note{i:03}.md").write_text(
            f"# Note {i} on {topic}\n\nFact {i}: {topic} matter because of reason {i * 13}. "
            f"Students often confuse {topic} with item {i * 7} in the lecture of week {i % 12}.\n"
        )
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [EXE, "ingest", str(folder), "--data-dir", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        # Interrupt once a batch is done and the next files are in flight.
        wait_until_in_flight(proc, data / "studyrag.db")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == 130, err
    said = " ".join(err.split())
    assert "Stopping…" in said and "Stopped by Ctrl-C" in said and "are queued" in said
    assert "Run the same command again" in said
    assert "✓ note000.md" in out

    listed = lines(run("documents", "list", "--json", data_dir=data, check=True).stdout)
    done = sum(1 for d in listed if d["status"] == "completed")
    assert 0 < done < 400, "the run was not interrupted"
    assert {d["status"] for d in listed} <= {"completed", "queued"}, "nothing half-indexed"
    statuses = asyncio.run(assert_nothing_half_indexed(data))
    assert "processing" not in statuses

    again = run("ingest", str(folder), data_dir=data)
    assert again.returncode == 0, again.stderr
    assert f"{400 - done} ingested, {done} already present, 0 failed" in again.stderr
