"""`studyrag models`: list, choose or pull models (through the running server when one is up)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

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
    setup_logging,
    with_services,
)

if TYPE_CHECKING:
    from studyrag.config import Settings
    from studyrag.schemas.admin import ModelsPublic, ModelSwitched
    from studyrag.services import Services

app = typer.Typer(help="List, choose or pull chat and embedding models.", no_args_is_help=True)

RoleOpt = Annotated[str, typer.Option("--role", help="chat or embedding.")]


@app.command("list")
def models_list(
    data_dir: DataDir = None, as_json: JsonOut = False, api_key: ApiKeyOpt = None
) -> None:
    """Every model the providers can serve; * marks the active one. Each name works with `use`."""
    from studyrag.schemas.admin import ModelsPublic

    setup_logging()
    served = ask_server(data_dir, "GET", "/api/models", as_json=as_json, api_key=api_key)
    if served is not None:
        listing = ModelsPublic.model_validate(served[1])
    else:
        settings = settings_for(data_dir)
        listing = run(lambda: _list_in_process(settings), as_json=as_json)
    if as_json:
        for m in [*listing.chat, *listing.embedding]:
            emit(m.to_dict())
        return
    sections = (
        ("Chat models", listing.chat),
        ("Embedding models (use them with --role embedding)", listing.embedding),
    )
    for title, models in sections:
        console.print(f"[bold]{title}[/]")
        if not models:
            console.print("  [dim](none)[/]")
        for m in models:
            mark = "[green]*[/]" if m.active else " "
            size = f" {m.size / 1e6:.0f} MB" if m.size else ""
            missing = "" if m.available else " [red]unavailable[/]"
            console.print(f"{mark} {m.name}  [dim]{m.provider}{size}[/]{missing}", highlight=False)
    for p in listing.providers:
        if not p.reachable:
            message = (p.error or {}).get("message", "not reachable")
            err_console.print(f"[yellow]{p.provider}[/] ({p.role}): {message}", highlight=False)


async def _list_in_process(settings: Settings) -> ModelsPublic:
    import asyncio

    from studyrag.admin.catalog import ModelCatalog, configured
    from studyrag.schemas.admin import ModelsPublic

    catalog = ModelCatalog(settings)
    chat, embedding = await asyncio.gather(catalog.chat(), catalog.embedding())
    return ModelsPublic(
        chat=[e.public(active=configured(e, settings)) for e in chat.entries],
        embedding=[e.public(active=configured(e, settings)) for e in embedding.entries],
        providers=chat.providers + embedding.providers,
    )


@app.command("use")
def models_use(
    name: Annotated[str, typer.Argument(help="A name from `models list`, or a .gguf path.")],
    provider: Annotated[
        str | None, typer.Option(help="llamacpp, ollama, openai or sentence-transformers.")
    ] = None,
    role: RoleOpt = "chat",
    data_dir: DataDir = None,
    as_json: JsonOut = False,
    api_key: ApiKeyOpt = None,
) -> None:
    """Choose a model. A running server switches at once (an embedding model reindexes every
    notebook first); otherwise the choice is saved in config.toml for the next start. A name
    no provider knows is refused and nothing is saved."""
    setup_logging()
    if role not in ("chat", "embedding"):
        err_console.print("[bold red]error[/] --role is chat or embedding.")
        raise typer.Exit(2)
    body = {"role": role, "provider": provider, "model": name}
    served = ask_server(
        data_dir,
        "POST",
        "/api/models/switch",
        body=body,
        as_json=as_json,
        timeout=300,
        api_key=api_key,
    )
    if served is not None:
        from studyrag.schemas.admin import ModelSwitched

        result = ModelSwitched.model_validate(served[1])
        where = f"by the server at {served[0]}"
    else:
        settings = settings_for(data_dir)
        result = run(lambda: _use_in_process(settings, body, as_json), as_json=as_json)
        where = "saved for the next start"
    if as_json:
        emit(result.to_dict())
        return
    if result.status == "reindexing":
        console.print(
            f"[green]switching[/] to {result.name} ({result.provider}) {where}: reindex job "
            f"{result.job_id}; search keeps the old model until it completes."
        )
    else:
        console.print(f"[green]using[/] {result.name} ({result.provider}) as {role} model, {where}")


async def _use_in_process(settings: Settings, body: dict[str, Any], as_json: bool) -> Any:
    from studyrag.schemas.admin import ModelSwitch

    request = ModelSwitch.model_validate(body)
    if request.role == "chat":
        return await _use_chat_offline(settings, request)

    async def go(services: Services) -> ModelSwitched:
        assert services.models is not None
        result = await services.models.switch(request)
        if result.job_id is not None:
            # No server: the reindex runs here, in the foreground.
            if not as_json:
                err_console.print("reindexing every notebook with the new model…")
            await services.jobs.run(result.job_id)
            job = await services.jobs.public(result.job_id)
            if job.status != "completed":
                from studyrag.errors import JobConflict

                raise JobConflict(f"The reindex job {job.status}: {job.error or 'see the log'}.")
            result = result.model_copy(update={"status": "active"})
        return result

    return await with_services(settings, go)


async def _use_chat_offline(settings: Settings, request: Any) -> ModelSwitched:
    """Check the name against every provider, then save it (no model is loaded)."""
    from studyrag.admin.catalog import ModelCatalog
    from studyrag.admin.config import ConfigService
    from studyrag.admin.models import chat_changes
    from studyrag.schemas.admin import ModelSwitched

    entry = await ModelCatalog(settings).resolve("chat", request.model, request.provider)
    previous: dict[str, str] = {"provider": settings.llm.provider}
    ConfigService(settings, live=False).update(chat_changes(entry), allow_model_keys=True)
    return ModelSwitched(
        role="chat", provider=entry.provider, name=entry.name, status="active", previous=previous
    )


@app.command("pull")
def models_pull(
    name: str, data_dir: DataDir = None, as_json: JsonOut = False, api_key: ApiKeyOpt = None
) -> None:
    """Download a model into the Ollama server."""
    setup_logging()
    settings = settings_for(data_dir)
    printer = _Progress(name, as_json)
    if not _pull_via_server(data_dir, name, printer, as_json, api_key):

        async def go() -> None:
            from studyrag.admin.models import check_ollama, pull

            await check_ollama(settings)
            async for step in pull(settings, name):
                printer(step)

        run(go, as_json=as_json)
    if not as_json:
        console.print(f"[green]pulled[/] {name}; use it with `studyrag models use {name}`")


class _Progress:
    def __init__(self, name: str, as_json: bool) -> None:
        self.name, self.as_json, self.last = name, as_json, ""

    def __call__(self, step: dict[str, Any]) -> None:
        if self.as_json:
            emit({"model": self.name} | dict(step))
            return
        status = str(step.get("status") or "")
        if status != self.last or step.get("total"):
            total, done = step.get("total") or 0, step.get("completed") or 0
            pct = f" {100 * done / total:.0f}%" if total else ""
            err_console.print(f"{status}{pct}", highlight=False)
            self.last = status


def _pull_via_server(
    data_dir: Any, name: str, printer: _Progress, as_json: bool, api_key: str | None
) -> bool:
    """Pull through the running server's SSE stream; False when no server runs."""
    import httpx

    from studyrag.cli.common import answer_error, running_server, server_error, show_error

    server = running_server(data_dir, api_key)
    if server is None:
        return False
    try:
        with httpx.stream(
            "POST",
            f"{server.url}/api/models/pull",
            json={"name": name},
            headers=server.headers,
            timeout=None,
        ) as reply:
            if reply.status_code >= 400:
                reply.read()
                server_error(reply, as_json)
            event = ""
            for line in reply.iter_lines():
                if line.startswith("event:"):
                    event = line.partition(":")[2].strip()
                elif line.startswith("data:"):
                    data = json.loads(line.partition(":")[2])
                    if event == "progress":
                        printer(data)
                    elif event == "error":
                        show_error(answer_error(data), as_json=as_json)
                        raise typer.Exit(1)
    except httpx.HTTPError:
        return False
    return True
