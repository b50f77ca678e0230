"""`studyrag notebooks …` and `--notebook` on the other commands, through the real console
script: each notebook sees only its own documents and conversations."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_cli import lines, run

pytestmark = pytest.mark.slow


def test_notebooks_keep_their_documents_apart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    bio, geo = tmp_path / "bio", tmp_path / "geo"
    bio.mkdir()
    geo.mkdir()
    (bio / "cells.md").write_text("# Cells\n\nMitochondria make ATP for the cell.\n")
    (geo / "rocks.md").write_text("# Rocks\n\nBasalt is a volcanic rock from lava.\n")

    created = lines(
        run("notebooks", "create", "Biology 101", "--json", data_dir=data, check=True).stdout
    )
    assert created[0]["name"] == "Biology 101" and created[0]["documents"] == 0
    run("notebooks", "create", "Geology", data_dir=data, check=True)
    taken = run("notebooks", "create", "biology  101", data_dir=data)
    assert taken.returncode == 1 and "NB_002" in taken.stderr

    run("ingest", str(bio), "--notebook", "Biology 101", data_dir=data, check=True)
    run("ingest", str(geo), "-n", "geology", data_dir=data, check=True)  # any case

    def found(query: str, notebook: str | None) -> set[str]:
        args = ["search", query, "--json", "--mode", "lexical"]
        proc = run(*args, *(["--notebook", notebook] if notebook else []), data_dir=data)
        return {r["filename"] for r in lines(proc.stdout)} if proc.returncode == 0 else set()

    assert found("mitochondria basalt", "Biology 101") == {"cells.md"}
    assert found("mitochondria basalt", "Geology") == {"rocks.md"}
    # The default notebook holds neither, and says how to fill it.
    empty = run("search", "basalt", data_dir=data)
    assert empty.returncode == 1 and "is empty" in empty.stderr
    assert "studyrag ingest PATH" in empty.stderr and "/api/" not in empty.stderr

    listed = lines(
        run("documents", "list", "--json", "-n", "Geology", data_dir=data, check=True).stdout
    )
    assert [d["filename"] for d in listed] == ["rocks.md"]
    unknown = run("documents", "list", "--notebook", "Chemistry", data_dir=data)
    assert unknown.returncode == 1 and "NB_001" in unknown.stderr

    renamed = run("notebooks", "rename", "Geology", "Earth science", data_dir=data, check=True)
    assert "Earth science" in renamed.stdout
    books = lines(run("notebooks", "list", "--json", data_dir=data, check=True).stdout)
    assert [b["name"] for b in books][1:] == ["Biology 101", "Earth science"]
    assert books[0]["is_default"] and books[2]["documents"] == 1

    run("notebooks", "delete", "Earth science", "--yes", data_dir=data, check=True)
    books = lines(run("notebooks", "list", "--json", data_dir=data, check=True).stdout)
    assert "Earth science" not in {b["name"] for b in books}
    assert found("basalt", "Biology 101") == set()
    gone = run("search", "basalt", "--notebook", "Earth science", data_dir=data)
    assert gone.returncode == 1 and "NB_001" in gone.stderr
