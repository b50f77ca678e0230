"""`studyrag users`: create, list, disable and reset the password of multi-user accounts.

Like `studyrag keys`, these open only the database (never the models), so they are quick
and work beside a running server."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from studyrag.cli.common import DataDir, JsonOut, console, emit, run, settings_for, setup_logging

if TYPE_CHECKING:
    from studyrag.auth.users import UserService
    from studyrag.db.auth import AuthRepo
    from studyrag.db.models import User

T = TypeVar("T")

app = typer.Typer(help="Accounts of a multi-user server.", no_args_is_help=True)

PasswordStdin = Annotated[
    bool,
    typer.Option("--password-stdin", help="Read the password from the first line of stdin."),
]


def with_accounts(
    data_dir: Path | None, fn: Callable[[AuthRepo], Awaitable[T]], *, as_json: bool = False
) -> T:
    """Run `fn` with the accounts' SQL over the data dir's (migrated) database."""
    settings = settings_for(data_dir)
    setup_logging()

    async def go() -> T:
        from studyrag.db.auth import AuthRepo
        from studyrag.db.session import Database

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.database_url)
        try:
            await db.migrate()
            return await fn(AuthRepo(db))
        finally:
            await db.aclose()

    return run(go, as_json=as_json)


def change_user(
    data_dir: Path | None,
    change: Callable[[UserService], Awaitable[User]],
    said: Callable[[dict[str, Any]], str],
    *,
    as_json: bool,
) -> None:
    """Run one change of a user, then print the user (--json) or what was done."""

    async def go(repo: AuthRepo) -> dict[str, Any]:
        from studyrag.auth.users import UserService
        from studyrag.schemas.auth import UserPublic

        return UserPublic.from_row(await change(UserService(repo))).to_dict()

    user = with_accounts(data_dir, go, as_json=as_json)
    if as_json:
        emit(user)
    else:
        console.print(said(user), highlight=False)


def read_password(from_stdin: bool) -> str:
    """The new password: stdin's first line, or asked twice on the terminal."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    value: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return value


@app.command("create")
def users_create(
    name: Annotated[str, typer.Argument(help="Letters, digits, '.', '_', '@' or '-'.")],
    admin: Annotated[bool, typer.Option("--admin", help="May manage the server.")] = False,
    password_stdin: PasswordStdin = False,
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """Create a user. The first admin takes over what the local owner had."""
    password = read_password(password_stdin)
    change_user(
        data_dir,
        lambda users: users.create(name, password, is_admin=admin),
        lambda u: f"Created {'admin' if u['is_admin'] else 'user'} [bold]{u['name']}[/].",
        as_json=as_json,
    )


@app.command("list")
def users_list(data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """List the users."""

    async def go(repo: AuthRepo) -> list[dict[str, Any]]:
        from studyrag.auth.users import UserService

        return [u.to_dict() for u in await UserService(repo).all()]

    users = with_accounts(data_dir, go, as_json=as_json)
    if as_json:
        for u in users:
            emit(u)
        return
    if not users:
        console.print("No users yet: the server runs for the local owner only.")
        console.print("Create one with [bold]studyrag users create NAME --admin[/].")
        return
    from rich.table import Table

    table = Table("name", "role", "status", "created")
    for u in users:
        table.add_row(
            u["name"],
            "admin" if u["is_admin"] else "user",
            "disabled" if u["disabled"] else "active",
            str(u["created_at"]),
        )
    console.print(table)


@app.command("disable")
def users_disable(
    name: Annotated[str, typer.Argument(help="The user.")],
    enable: Annotated[bool, typer.Option("--enable", help="Enable the user again.")] = False,
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """Disable a user: their sessions end and their keys stop working (--enable undoes it)."""
    change_user(
        data_dir,
        lambda users: users.set_disabled(name, not enable),
        lambda u: f"[bold]{u['name']}[/] is {'disabled' if u['disabled'] else 'enabled'}.",
        as_json=as_json,
    )


@app.command("reset-password")
def users_reset_password(
    name: Annotated[str, typer.Argument(help="The user.")],
    password_stdin: PasswordStdin = False,
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """Give a user a new password; every login session of theirs ends."""
    password = read_password(password_stdin)
    change_user(
        data_dir,
        lambda users: users.reset_password(name, password),
        lambda u: f"New password set for [bold]{u['name']}[/].",
        as_json=as_json,
    )
