"""`studyrag users` and `studyrag keys` through the real entry point, on a real database:
the key printed once verifies, a revoked one and a disabled user's do not."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from studyrag.errors import LoginFailed, Unauthorized
from tests.conftest import free_port
from tests.e2e.test_cli import cli_env, lines
from tests.e2e.test_cli import run as cli
from tests.e2e.test_ingest_search import write_corpus
from tests.web.harness import serve

EXE = str(Path(sys.executable).with_name("studyrag"))


def studyrag(*args: str, data_dir: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, *args, "--data-dir", str(data_dir)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


async def _verify(data_dir: Path, key: str) -> str:
    from studyrag.auth.keys import ApiKeyService
    from studyrag.db.auth import AuthRepo
    from studyrag.db.session import Database

    db = Database(f"sqlite+aiosqlite:///{data_dir / 'studyrag.db'}")
    try:
        user, scopes = await ApiKeyService(AuthRepo(db)).verify(key)
        return f"{user.name}:{','.join(scopes)}"
    finally:
        await db.aclose()


async def _login(data_dir: Path, name: str, password: str) -> str:
    from studyrag.auth.users import UserService
    from studyrag.db.auth import AuthRepo
    from studyrag.db.session import Database

    db = Database(f"sqlite+aiosqlite:///{data_dir / 'studyrag.db'}")
    try:
        return (await UserService(AuthRepo(db)).authenticate(name, password)).name
    finally:
        await db.aclose()


def test_users_and_keys_from_the_command_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    made = studyrag(
        "users", "create", "alice", "--admin", "--password-stdin", "--json",
        data_dir=data, stdin="alice-password\n",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["is_admin"] is True
    twice = studyrag("users", "create", "Alice", "--password-stdin", data_dir=data, stdin="x" * 9)
    assert twice.returncode == 1 and "AUTH_004" in twice.stderr
    short = studyrag("users", "create", "bob", "--password-stdin", data_dir=data, stdin="short\n")
    assert short.returncode == 1 and "AUTH_008" in short.stderr
    listed = studyrag("users", "list", "--json", data_dir=data)
    assert [json.loads(line)["name"] for line in listed.stdout.splitlines()] == ["alice"]

    created = studyrag(
        "keys", "create", "--user", "alice", "--name", "ci", "--scopes", "read,chat", "--json",
        data_dir=data,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert key["key"].startswith("srk_") and key["scopes"] == ["read", "chat"]
    assert asyncio.run(_verify(data, key["key"])) == "alice:read,chat"
    shown = studyrag("keys", "list", "--json", data_dir=data)
    rows = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [r["id"] for r in rows] == [key["id"]] and "key" not in rows[0]
    assert key["key"] not in shown.stdout
    bad = studyrag("keys", "create", "--user", "alice", "--scopes", "root", data_dir=data)
    assert bad.returncode == 1 and "AUTH_008" in bad.stderr

    assert studyrag("keys", "revoke", key["id"], data_dir=data).returncode == 0
    with pytest.raises(Unauthorized):
        asyncio.run(_verify(data, key["key"]))
    again = studyrag("keys", "revoke", key["id"], data_dir=data)
    assert again.returncode == 1 and "AUTH_009" in again.stderr

    second = json.loads(
        studyrag("keys", "create", "--user", "alice", "--json", data_dir=data).stdout
    )
    reset = studyrag(
        "users",
        "reset-password",
        "alice",
        "--password-stdin",
        data_dir=data,
        stdin="new-password\n",
    )
    assert reset.returncode == 0, reset.stderr
    assert asyncio.run(_login(data, "alice", "new-password")) == "alice"
    with pytest.raises(LoginFailed):
        asyncio.run(_login(data, "alice", "alice-password"))
    assert studyrag("users", "disable", "alice", data_dir=data).returncode == 0
    with pytest.raises(Unauthorized):
        asyncio.run(_verify(data, second["key"]))
    with pytest.raises(LoginFailed):
        asyncio.run(_login(data, "alice", "new-password"))


def test_cli_commands_send_a_key_to_a_multi_user_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    made = studyrag("users", "create", "alice", "--admin", "--password-stdin", data_dir=data,
                    stdin="alice-password\n")  # fmt: skip
    assert made.returncode == 0, made.stderr
    full = json.loads(studyrag(
        "keys", "create", "--user", "alice", "--scopes", "read,chat,admin", "--json",
        data_dir=data,
    ).stdout)["key"]  # fmt: skip
    reader = json.loads(studyrag(
        "keys", "create", "--user", "alice", "--scopes", "read,chat", "--json", data_dir=data,
    ).stdout)["key"]  # fmt: skip
    made = studyrag("users", "create", "bob", "--password-stdin", data_dir=data,
                    stdin="bob-password-1\n")  # fmt: skip
    assert made.returncode == 0, made.stderr
    bob = json.loads(studyrag(
        "keys", "create", "--user", "bob", "--scopes", "read,chat,admin", "--json", data_dir=data,
    ).stdout)["key"]  # fmt: skip
    notes = write_corpus(tmp_path / "notes")
    extra = tmp_path / "extra.txt"
    extra.write_text("Mitochondria are the powerhouse of the cell; they make ATP.\n")

    multi_user = {"STUDYRAG_AUTH__MODE": "multi-user", "STUDYRAG_LLM__MAX_TOKENS": "24"}
    with serve(data, free_port(), tmp_path / "serve.log", env=multi_user) as url:
        # No key: the server's AUTH_001, and how to get a key, in CLI words; nothing done here.
        for args in (("search", "chlorophyll"), ("ingest", str(notes)), ("models", "list")):
            refused = cli(*args, data_dir=data)
            assert refused.returncode == 1, (args, refused.stdout, refused.stderr)
            said = " ".join(refused.stderr.split())
            assert "[AUTH_001]" in said, (args, said)
            assert "--api-key" in said and "STUDYRAG_API_KEY" in said, said
            assert "studyrag keys create --user NAME" in said, said
        as_json = lines(cli("search", "chlorophyll", "--json", data_dir=data).stdout)
        assert as_json[0]["error_code"] == "AUTH_001"
        assert "--api-key" in as_json[0]["details"]["hint"]
        as_alice = {"Authorization": f"Bearer {full}"}
        docs = httpx.get(f"{url}/api/documents", headers=as_alice).json()
        assert docs["items"] == [], "a refused ingest adds nothing"

        # A key with the admin scope adds files through the server (--api-key)...
        added = cli("ingest", str(notes), "--json", "--api-key", full, data_dir=data)
        assert added.returncode == 0, added.stderr
        assert {r["status"] for r in lines(added.stdout)} == {"completed"}
        # ...and a read-only key gets the server's AUTH_002, saying which scope it lacks.
        denied = cli("ingest", str(extra), data_dir=data, env=cli_env(STUDYRAG_API_KEY=reader))
        assert denied.returncode == 1
        said = " ".join(denied.stderr.split())
        assert "[AUTH_002]" in said and "admin" in said, said
        assert "studyrag keys create --user NAME --scopes" in said, said

        # Notebooks made, renamed and deleted with a key are the key's user's, on the server
        # (made in this process they would belong to no one the server shows).
        made = cli("notebooks", "create", "Lab notes", "--json", "--api-key", bob, data_dir=data)
        assert made.returncode == 0, made.stderr
        lab = lines(made.stdout)[0]
        as_bob = {"Authorization": f"Bearer {bob}"}
        assert httpx.get(f"{url}/api/notebooks/{lab['id']}", headers=as_bob).status_code == 200
        assert httpx.get(f"{url}/api/notebooks/{lab['id']}", headers=as_alice).status_code == 404
        listed = cli("notebooks", "list", "--json", "--api-key", bob, data_dir=data)
        assert "Lab notes" in {nb["name"] for nb in lines(listed.stdout)}
        listed = cli("notebooks", "list", "--json", "--api-key", full, data_dir=data)
        assert "Lab notes" not in {nb["name"] for nb in lines(listed.stdout)}
        renamed = cli("notebooks", "rename", "Lab notes", "Lab book", "--api-key", bob,
                      data_dir=data)  # fmt: skip
        assert renamed.returncode == 0, renamed.stderr
        not_hers = cli("notebooks", "delete", "Lab book", "--yes", "--api-key", full,
                       data_dir=data)  # fmt: skip
        assert not_hers.returncode == 1 and "[NB_001]" in not_hers.stderr, not_hers.stderr
        gone = cli("notebooks", "delete", "Lab book", "--yes", "--json", "--api-key", bob,
                   data_dir=data)  # fmt: skip
        assert gone.returncode == 0, gone.stderr
        assert lines(gone.stdout)[0]["status"] == "completed"
        assert httpx.get(f"{url}/api/notebooks/{lab['id']}", headers=as_bob).status_code == 404
        no_key = cli("notebooks", "create", "Keyless", data_dir=data)
        assert no_key.returncode == 1 and "[AUTH_001]" in no_key.stderr, no_key.stderr

        # The key from the environment: search, ask and export all go through the server.
        env = cli_env(STUDYRAG_API_KEY=reader)
        found = cli("search", "chlorophyll", "--json", data_dir=data, env=env)
        assert found.returncode == 0, found.stderr
        assert lines(found.stdout)[0]["filename"] == "biology.pdf"
        shown = cli("search", "chlorophyll", data_dir=data, env=env)
        assert f"by the server at {url}" in " ".join(shown.stdout.split())
        asked = cli("ask", "What does chlorophyll absorb?", "--json", data_dir=data, env=env)
        assert asked.returncode == 0, asked.stderr
        answer = lines(asked.stdout)[0]
        assert answer["answer"].strip() and answer["status"] == "complete"
        # The chat REPL too: answered by the server, the conversation stored there.
        repl = subprocess.run(
            [EXE, "chat", "--data-dir", str(data)],
            input="What does chlorophyll absorb?\n/quit\n",
            capture_output=True,
            text=True,
            timeout=300,
            env=env | {"COLUMNS": "250"},
            check=False,
        )
        assert repl.returncode == 0, repl.stderr
        said = " ".join(repl.stdout.split())
        assert f"answered by the server at {url}" in said and "studyrag>" in said, said
        saved = said.split("conversation ")[-1].split()[0]
        stored = httpx.get(
            f"{url}/api/chat/conversations/{saved}/messages",
            headers={"Authorization": f"Bearer {reader}"},
        ).json()["items"]
        assert [(m["role"], m["status"]) for m in stored] == [
            ("user", "complete"),
            ("assistant", "complete"),
        ]
        docs = httpx.get(f"{url}/api/documents", headers=as_alice).json()["items"]
        assert {d["filename"] for d in docs} == {"biology.pdf", "history.md", "chemistry.txt"}
        books = httpx.get(f"{url}/api/notebooks", headers=as_alice).json()["items"]
        name = next(b["name"] for b in books if b["id"] == docs[0]["notebook_id"])
        archive = tmp_path / "out.zip"
        exported = cli("notebooks", "export", name, "-o", str(archive), "--json",
                       data_dir=data, env=env)  # fmt: skip
        assert exported.returncode == 0, exported.stderr
        assert lines(exported.stdout)[0]["server"] == url and archive.stat().st_size > 0

        # Both have a "Biology 101": --notebook NAME is the caller's own, for each of them.
        ids = {}
        for who, key in (("alice", full), ("bob", bob)):
            made = httpx.post(
                f"{url}/api/notebooks",
                json={"name": "Biology 101"},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert made.status_code == 201, made.text
            ids[who] = made.json()["id"]
        into = cli("ingest", str(extra), "--notebook", "biology 101", "--json", "--api-key", bob,
                   data_dir=data)  # fmt: skip
        assert into.returncode == 0, into.stderr
        for who, key in (("alice", full), ("bob", bob)):
            held = httpx.get(
                f"{url}/api/notebooks/{ids[who]}/documents",
                headers={"Authorization": f"Bearer {key}"},
            ).json()["items"]
            assert [d["filename"] for d in held] == (["extra.txt"] if who == "bob" else [])
        # Nothing found for bob on the server: the CLI never searches in its own process
        # instead (it would read the library as its local owner: alice's notebook).
        for args in (("search", "chlorophyll", "--mode", "lexical"), ("search", "Bastille")):
            mine = cli(*args, "--json", "--api-key", bob, data_dir=data)
            assert mine.returncode == 0, mine.stderr
            assert {r["filename"] for r in lines(mine.stdout)} <= {"extra.txt"}, mine.stdout
        asked = cli("ask", "What is the Bastille?", "--notebook", "nope", "--api-key", bob,
                    data_dir=data)  # fmt: skip
        assert asked.returncode == 1 and "NB_001" in asked.stderr, asked.stderr
        # Shared with bob, alice's stays second to his own; by id it is hers, which only
        # its owner exports (AUTH_002: he sees it, so it is not hidden as NB_001).
        shared = httpx.post(
            f"{url}/api/notebooks/{ids['alice']}/shares",
            json={"user": "bob", "role": "viewer"},
            headers=as_alice,
        )
        assert shared.status_code == 201, shared.text

        def export(ref: str) -> subprocess.CompletedProcess[str]:
            return cli("notebooks", "export", ref, "-o", str(tmp_path / "b.zip"), "--json",
                       "--api-key", bob, data_dir=data)  # fmt: skip

        own = export("Biology 101")
        assert own.returncode == 0, own.stderr
        assert lines(own.stdout)[0]["notebook_id"] == ids["bob"]
        hers = export(ids["alice"])
        assert hers.returncode == 1 and lines(hers.stdout)[0]["error_code"] == "AUTH_002"
