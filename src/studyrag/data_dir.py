"""Where StudyRAG keeps its data unless told otherwise (cheap to import: --help shows it)."""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "studyrag"
ENV_VAR = "STUDYRAG_DATA_DIR"


def default_data_dir() -> Path:
    """$STUDYRAG_DATA_DIR, else the user's data directory (~/.local/share/studyrag on Linux).

    Not ./data: the library must be the same whichever folder the terminal is in.
    """
    from platformdirs import user_data_dir

    value = os.environ.get(ENV_VAR) or user_data_dir(APP_NAME, appauthor=False)
    return Path(value).expanduser().resolve()
