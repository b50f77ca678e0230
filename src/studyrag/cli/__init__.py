"""The `studyrag` command line (typer + rich); one module per area, as in api/routes/.

Heavy imports stay inside commands, so `studyrag --help` is instant.
"""

from __future__ import annotations

import typer

from studyrag.cli import (
    chat,
    config,
    conversations,
    documents,
    ingest,
    keys,
    models,
    notebooks,
    search,
    serve,
    users,
)
from studyrag.cli.common import data_dir_note

app = typer.Typer(
    name="studyrag",
    help="Chat with your study documents: ingest, search, ask. Offline by default.\n\n"
    f"Data directory: {data_dir_note()}; any command takes --data-dir DIR.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(notebooks.app, name="notebooks")
app.command()(ingest.ingest)
app.command()(search.search)
app.add_typer(documents.app, name="documents")
app.command()(chat.ask)
app.command()(chat.chat)
app.add_typer(conversations.app, name="conversations")
app.add_typer(models.app, name="models")
app.add_typer(config.app, name="config")
app.command()(serve.serve)
app.add_typer(users.app, name="users")
app.add_typer(keys.app, name="keys")


def main() -> None:
    """Console entry point."""
    app()
