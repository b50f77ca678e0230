"""`studyrag config`: show or change settings (through the running server when one is up)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from studyrag.cli.common import (
    ApiKeyOpt,
    DataDir,
    JsonOut,
    ask_server,
    console,
    emit,
    err_console,
    run,
    settings_for,
)

app = typer.Typer(help="Show or change settings.", no_args_is_help=True)


@app.command("show")
def config_show(
    key: Annotated[str | None, typer.Argument(help="Only this setting (e.g. chat.top_k).")] = None,
    data_dir: DataDir = None,
    as_json: JsonOut = False,
    api_key: ApiKeyOpt = None,
) -> None:
    """The effective settings (secrets redacted) and when a change of each takes effect."""
    from studyrag.schemas.admin import ConfigPublic

    served = ask_server(data_dir, "GET", "/api/config", as_json=as_json, api_key=api_key)
    if served is not None:
        config = ConfigPublic.model_validate(served[1])
    else:
        config = _service(data_dir).describe()
    items = [s for s in config.settings if key is None or s.key == key]
    if key is not None and not items:
        run(lambda: _check_key(data_dir, key), as_json=as_json)  # UnknownSetting, suggestions
    if as_json:
        for s in items:
            emit(s.to_dict())
        return
    for s in items:
        when = "restart" if s.restart_required else s.applies
        value = json.dumps(s.value, ensure_ascii=False)
        console.print(f"{s.key} = {value}  [dim]({when}; {s.source})[/]", highlight=False)
    where = f" (served by {served[0]})" if served else ""
    err_console.print(f"[dim]saved in {config.path}{where}[/]", highlight=False)


@app.command("set")
def config_set(
    key: Annotated[str, typer.Argument(help="A setting, e.g. chat.top_k.")],
    value: Annotated[str, typer.Argument(help="Its new value (JSON for lists and tables).")],
    data_dir: DataDir = None,
    as_json: JsonOut = False,
    api_key: ApiKeyOpt = None,
) -> None:
    """Change a setting: validated, saved to config.toml, applied at once by a running server."""
    from studyrag.schemas.admin import ConfigUpdated

    changes = {key: _parse(value)}
    body = {"changes": changes}
    served = ask_server(data_dir, "PUT", "/api/config", body=body, as_json=as_json, api_key=api_key)
    if served is not None:
        result = ConfigUpdated.model_validate(served[1])
    else:
        service = _service(data_dir)
        result = run(lambda: _update(service, changes), as_json=as_json)
    if as_json:
        emit(result.to_dict())
        return
    shown = next((s.value for s in result.settings if s.key == key), value)
    if key in result.applied:
        when = "applied now by the server" if served else "in effect from the next command"
    elif key in result.on_model_load:
        when = "applies when a model is next loaded"
    else:
        when = "applies when the server starts again"
    console.print(
        f"[green]saved[/] {key} = {json.dumps(shown, ensure_ascii=False)} in {result.path}; {when}",
        highlight=False,
    )
    for warning in result.warnings:
        err_console.print(f"[yellow]warning[/] {warning}", highlight=False)


async def _check_key(data_dir: Any, key: str) -> None:
    _service(data_dir).get(key)


async def _update(service: Any, changes: dict[str, Any]) -> Any:
    return service.update(changes)


def _service(data_dir: Any) -> Any:
    from studyrag.admin.config import ConfigService

    # No server: nothing to apply to, so restart-only settings may be saved too.
    return ConfigService(settings_for(data_dir), live=False)


def _parse(value: str) -> Any:
    """Tables and lists as JSON; anything else as typed (pydantic converts "8" to 8)."""
    text = value.strip()
    if text[:1] in "{[":
        try:
            return json.loads(text)
        except ValueError:
            return value
    return value
