"""The CLI a newcomer meets: where the library is, an empty library, short ids, CLI hints."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from studyrag.config import Settings
from studyrag.db.models import Conversation
from studyrag.services import open_services
from tests.conftest import free_port
from tests.e2e.test_cli import EXE, cli_env, lines, run
from tests.e2e.test_ingest_search import write_corpus

pytestmark = pytest.mark.slow


@pytest.mark.skipif(sys.platform != "linux", reason="XDG_DATA_HOME decides the dir on Linux")
def test_the_default_library_is_the_same_from_any_folder(tmp_path: Path) -> None:
    env = cli_env(XDG_DATA_HOME=str(tmp_path / "xdg"), HOME=str(tmp_path / "home"))
    library = tmp_path / "xdg" / "studyrag"
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    notes = write_corpus(tmp_path / "notes")

    wide = env | {"COLUMNS": "250"}  # help text unwrapped
    helped = run("--help", data_dir=None, env=wide, cwd=here, check=True).stdout
    assert f"Data directory: {library} ($STUDYRAG_DATA_DIR overrides it)" in helped
    option_help = run("search", "--help", data_dir=None, env=wide, check=True).stdout
    assert f"default: {library} ($STUDYRAG_DATA_DIR overrides it)" in option_help
    from_env = run("ask", "--help", data_dir=None, env=wide | {"STUDYRAG_DATA_DIR": "/x/y"})
    assert "default: /x/y (from $STUDYRAG_DATA_DIR)" in from_env.stdout

    empty = run("documents", "list", data_dir=None, env=env, cwd=here, check=True)
    assert f"No documents in {library}" in " ".join(empty.stdout.split())
    assert "studyrag ingest PATH" in empty.stdout

    ingested = run("ingest", str(notes), data_dir=None, env=env, cwd=here, check=True)
    assert f"library: {library}" in " ".join(ingested.stderr.split())
    assert not (here / "data").exists(), "nothing may land in the current folder"
    listed = lines(
        run("documents", "list", "--json", data_dir=None, env=env, cwd=elsewhere, check=True).stdout
    )
    assert {d["filename"] for d in listed} == {"biology.pdf", "history.md", "chemistry.txt"}

    # The server says where its data is as it starts.
    server = subprocess.Popen(
        [EXE, "serve", "--port", str(free_port())],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=elsewhere,
    )
    try:
        assert server.stderr is not None
        first = server.stderr.readline()
    finally:
        server.terminate()
        server.communicate(timeout=60)
    assert first.strip() == f"StudyRAG data directory: {library}"


def test_an_empty_library_says_so_and_where_it_looked(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for args in (("search", "chlorophyll"), ("ask", "What does chlorophyll absorb?")):
        human = run(*args, data_dir=data)
        assert human.returncode == 1
        said = " ".join(human.stderr.split())
        assert "SEARCH_004" in said and str(data) in said, said
        assert "studyrag ingest PATH" in said and "/api" not in said
        as_json = lines(run(*args, "--json", data_dir=data).stdout)[0]
        assert as_json["error_code"] == "SEARCH_004"
        assert as_json["details"]["hint"] == "Add documents with `studyrag ingest PATH`."

    (tmp_path / "empty.txt").write_text("")  # stored, but fails: no text (DOC_003)
    assert run("ingest", str(tmp_path / "empty.txt"), data_dir=data).returncode == 1
    only_failed = run("search", "chlorophyll", data_dir=data)
    assert only_failed.returncode == 1
    said = " ".join(only_failed.stderr.split())
    assert "None of the 1 documents" in said and "studyrag documents list" in said


def test_ids_may_be_shortened_to_a_unique_prefix(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run("ingest", str(write_corpus(tmp_path / "notes")), "--json", data_dir=data, check=True)
    docs = {d["filename"]: d["document_id"] for d in lines(run(
        "documents", "list", "--json", data_dir=data, check=True
    ).stdout)}  # fmt: skip
    pdf = docs["biology.pdf"]
    # A second document whose id shares the first six characters of the PDF's.
    twin = pdf[:6] + ("1" if pdf[6] != "1" else "2") + "0" * 25

    async def seed() -> tuple[str, str]:
        async with open_services(Settings(data_dir=data)) as services:
            await services.documents.create(
                id=twin,
                filename="twin.txt",
                source_path=str(tmp_path / "twin.txt"),
                file_type="txt",
                sha256="0" * 64,
                status="failed",
                error_code="DOC_003",
                error="made by the test",
            )
            first = await services.conversations.create(title="Photosynthesis")
            async with services.db.session() as s:
                other = first.id[:5] + ("1" if first.id[5] != "1" else "2") + "0" * 26
                s.add(Conversation(id=other, title="Revolutions", status="active"))
            return first.id, other

    conv, conv_twin = asyncio.run(seed())

    table = run("documents", "list", data_dir=data, check=True).stdout
    assert pdf[:8] in table and pdf not in table, "lists show short ids"
    shown = lines(run("documents", "show", pdf[:7], "--json", data_dir=data, check=True).stdout)
    assert shown[0]["document_id"] == pdf

    ambiguous = run("documents", "show", pdf[:6], data_dir=data)
    assert ambiguous.returncode == 1
    said = " ".join(ambiguous.stderr.split())
    assert "REQUEST_003" in said and pdf in said and twin in said and "twin.txt" in said
    body = lines(run("documents", "show", pdf[:6], "--json", data_dir=data).stdout)[0]
    assert body["error_code"] == "REQUEST_003"
    assert {c["id"] for c in body["details"]["candidates"]} == {pdf, twin}

    short = run("documents", "show", pdf[:3], data_dir=data)
    assert short.returncode == 1 and "DOC_004" in short.stderr
    assert "first 4 or more characters" in " ".join(short.stderr.split())
    unknown = run("documents", "show", "zzzzzz", data_dir=data)
    assert unknown.returncode == 1
    said = " ".join(unknown.stderr.split())
    assert "DOC_004" in said and "studyrag documents list" in said and "/api" not in said

    deleted = run("documents", "delete", pdf[:7], "--json", data_dir=data, check=True)
    assert lines(deleted.stdout)[0] == {
        "document_id": pdf,
        "status": "deleted",
        "error_code": None,
    }
    narrowed = run("search", "Bastille", "--document", docs["history.md"][:6], "--json",
                   data_dir=data, check=True)  # fmt: skip
    assert {h["filename"] for h in lines(narrowed.stdout)} == {"history.md"}

    convs = run("conversations", "list", data_dir=data, check=True).stdout
    assert conv[:8] in convs and conv not in convs
    both = run("conversations", "show", conv[:5], data_dir=data)
    said = " ".join(both.stderr.split())
    assert both.returncode == 1 and "REQUEST_003" in said
    assert conv in said and conv_twin in said and "Revolutions" in said
    one = lines(run("conversations", "show", conv[:6], "--json", data_dir=data, check=True).stdout)
    assert one[0]["id"] == conv
    run("conversations", "delete", conv[:6], data_dir=data, check=True)
    gone = run("conversations", "show", conv[:6], data_dir=data)
    said = " ".join(gone.stderr.split())
    assert gone.returncode == 1 and "CHAT_005" in said
    assert "studyrag conversations list" in said and "/api" not in said
