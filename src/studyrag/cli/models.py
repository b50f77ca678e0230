"""`studyrag models`: list, pull or choose chat models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from studyrag.cli.common import (
    DataDir,
    JsonOut,
    console,
    emit,
    err_console,
    run,
    settings_for,
    setup_logging,
)

app = typer.Typer(help="List, pull or choose chat models.", no_args_is_help=True)


@app.command("list")
def models_list(data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Models the configured chat provider can serve."""
    setup_logging()
    settings = settings_for(data_dir)

    async def go() -> tuple[str, str, list[Any]]:
        from studyrag.backends.registry import build_chat_model

        model = await build_chat_model(settings)
        async with model:
            return model.provider, model.model_name, await model.list_models()

    provider, current, models = run(go, as_json=as_json)
    for m in models:
        if as_json:
            emit(
                {"provider": provider, "name": m.name, "size": m.size, "current": m.name == current}
            )
        else:
            mark = "[green]*[/]" if m.name == current else " "
            size = f"{m.size / 1e6:.0f} MB" if m.size else ""
            console.print(f"{mark} {m.name}  [dim]{provider} {size}[/]")


@app.command("pull")
def models_pull(name: str, data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Download a model into the Ollama server (provider ollama)."""
    setup_logging()
    settings = settings_for(data_dir)

    async def go() -> None:
        from studyrag.backends.llm.ollama import OllamaChatModel

        model = OllamaChatModel(settings.llm, model=name)
        async with model:
            last = ""
            async for step in model.pull_model(name):
                if as_json:
                    emit({"model": name} | dict(step))
                elif step.get("status") != last or step.get("total"):
                    total, done = step.get("total") or 0, step.get("completed") or 0
                    pct = f" {100 * done / total:.0f}%" if total else ""
                    err_console.print(f"{step.get('status', '')}{pct}", highlight=False)
                    last = step.get("status", "")

    run(go, as_json=as_json)
    if not as_json:
        console.print(f"[green]pulled[/] {name}; use it with `studyrag models use {name}`")


@app.command("use")
def models_use(
    name: Annotated[str, typer.Argument(help="A model name, or a path to a .gguf file.")],
    provider: Annotated[str | None, typer.Option(help="llamacpp, ollama, openai or auto.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Choose the chat model; saved in <data dir>/config.toml and loaded at every start."""
    from studyrag.config import save_settings
    from studyrag.errors import ConfigError

    settings = settings_for(data_dir)
    updates: dict[str, Any] = {}
    if name.lower().endswith(".gguf"):
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            err_console.print(f"[bold red]error[/] [CONFIG_001] No GGUF file at {path}.")
            raise typer.Exit(1)
        updates = {"provider": provider or "llamacpp", "model_path": str(path)}
    else:
        updates = {
            "model": name,
            "provider": provider
            or (settings.llm.provider if settings.llm.provider != "llamacpp" else "ollama"),
        }
    if updates["provider"] not in ("llamacpp", "ollama", "openai", "auto"):
        raise ConfigError(f"Unknown provider {updates['provider']!r}.")
    path_saved = save_settings(settings, {"llm": updates})
    console.print(f"[green]saved[/] llm = {updates} in {path_saved}")
