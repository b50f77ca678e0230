"""The chat REPL logs to the data directory's log file, never onto the student's screen."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from studyrag.cli.common import LOG_FILE, setup_logging


def test_log_records_go_to_the_file_not_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / LOG_FILE
    try:
        setup_logging(log_file=path)
        logging.getLogger("studyrag.chat.citations").warning("Removed citation markers [7]")
        for handler in logging.getLogger().handlers:
            handler.flush()
        out = capsys.readouterr()
        assert "Removed citation" not in out.err + out.out
        assert "WARNING studyrag.chat.citations: Removed citation markers [7]" in path.read_text()
    finally:
        for handler in logging.getLogger().handlers:
            handler.close()
        setup_logging()
