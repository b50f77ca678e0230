"""`studyrag keys`: create, list and revoke API keys (`Authorization: Bearer <key>`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from studyrag.cli.common import DataDir, JsonOut, console, emit
from studyrag.cli.users import with_accounts

if TYPE_CHECKING:
    from studyrag.db.auth import AuthRepo

app = typer.Typer(
    help="API keys for programs (sent as Authorization: Bearer).", no_args_is_help=True
)


@app.command("create")
def keys_create(
    user: Annotated[str, typer.Option("--user", help="Whose key it is.")],
    name: Annotated[str, typer.Option("--name", help="A label to recognise it by.")] = "",
    scopes: Annotated[
        str, typer.Option("--scopes", help="Comma-separated: read, chat, admin.")
    ] = "read,chat",
    expires_days: Annotated[
        float | None, typer.Option("--expires-days", help="Stops working after this many days.")
    ] = None,
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """Create a key; it is shown once (only its hash is kept)."""

    async def go(repo: AuthRepo) -> dict[str, Any]:
        from studyrag.auth.keys import ApiKeyService
        from studyrag.auth.users import UserService

        owner = await UserService(repo).get(user)
        created = await ApiKeyService(repo).create(
            owner, name=name, scopes=scopes.split(","), expires_days=expires_days
        )
        return created.to_dict()

    key = with_accounts(data_dir, go, as_json=as_json)
    if as_json:
        emit(key)
        return
    console.print(f"Key {key['id']} for [bold]{key['user']}[/] ({', '.join(key['scopes'])}):")
    console.print(key["key"], highlight=False, soft_wrap=True)
    console.print("[dim]Shown once: store it now. Revoke it with `studyrag keys revoke ID`.[/]")


@app.command("list")
def keys_list(
    user: Annotated[str | None, typer.Option("--user", help="Only this user's keys.")] = None,
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """List keys (never their secrets)."""

    async def go(repo: AuthRepo) -> list[dict[str, Any]]:
        from studyrag.auth.keys import ApiKeyService
        from studyrag.auth.users import UserService

        owner = await UserService(repo).get(user) if user else None
        return [k.to_dict() for k in await ApiKeyService(repo).all(user=owner)]

    keys = with_accounts(data_dir, go, as_json=as_json)
    if as_json:
        for k in keys:
            emit(k)
        return
    if not keys:
        console.print("No keys. Create one with [bold]studyrag keys create --user NAME[/].")
        return
    from rich.table import Table

    table = Table("id", "user", "name", "scopes", "expires", "state")
    for k in keys:
        table.add_row(
            k["id"],
            k["user"],
            k["name"],
            ",".join(k["scopes"]),
            str(k["expires_at"] or "never"),
            "revoked" if k["revoked_at"] else "live",
        )
    console.print(table)


@app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (or the key itself).")],
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """Revoke a key: it stops working at once."""

    async def go(repo: AuthRepo) -> None:
        from studyrag.auth.keys import ApiKeyService

        await ApiKeyService(repo).revoke(key_id)

    with_accounts(data_dir, go, as_json=as_json)
    if as_json:
        emit({"revoked": key_id})
        return
    console.print(f"Revoked {key_id}.", highlight=False)
