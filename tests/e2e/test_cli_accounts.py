"""`studyrag users` and `studyrag keys` through the real entry point, on a real database:
the key printed once verifies, a revoked one and a disabled user's do not."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from studyrag.errors import LoginFailed, Unauthorized

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
