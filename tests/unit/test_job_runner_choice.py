"""Which JobRunner a configuration gets (backends/registry.py) and the jobs settings' checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from studyrag.backends.registry import build_job_runner
from studyrag.config import JobsSettings, Settings
from studyrag.errors import ConfigError

PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def _settings(tmp_path: Path, **jobs: object) -> Settings:
    return Settings(data_dir=tmp_path, jobs=JobsSettings(**jobs))  # type: ignore[arg-type]


def test_auto_is_in_process_on_sqlite_and_procrastinate_on_postgresql(tmp_path: Path) -> None:
    assert build_job_runner(_settings(tmp_path)).backend == "inprocess"
    on_pg = _settings(tmp_path)
    on_pg.database.url = PG
    runner = build_job_runner(on_pg)
    assert runner.backend == "procrastinate" and runner.retries_failed
    # SQLAlchemy's driver name is not libpq's: psycopg gets a plain postgresql:// DSN.
    assert runner.dsn == "postgresql://postgres@127.0.0.1:5432/test"  # type: ignore[attr-defined]
    explicit = _settings(tmp_path, runner="inprocess")
    explicit.database.url = PG
    assert build_job_runner(explicit).backend == "inprocess"


def test_procrastinate_on_sqlite_is_a_clear_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        build_job_runner(_settings(tmp_path, runner="procrastinate"))
    assert caught.value.error_code == "CONFIG_001"
    assert "PostgreSQL" in caught.value.message and "STUDYRAG_JOBS__RUNNER" in caught.value.hint


def test_a_stall_window_shorter_than_two_heartbeats_is_refused() -> None:
    with pytest.raises(ValidationError, match="twice"):
        JobsSettings(heartbeat_seconds=10, stalled_after_seconds=15)
    with pytest.raises(ValidationError):
        JobsSettings(queue="no spaces")


def test_a_shared_originals_directory_holds_imports_too(tmp_path: Path) -> None:
    local = Settings(data_dir=tmp_path / "data")
    assert local.files_dir == tmp_path / "data" / "files"
    assert local.imports_dir == tmp_path / "data" / "imports"
    shared = Settings(data_dir=tmp_path / "data", ingest={"files_dir": tmp_path / "nfs"})
    assert shared.files_dir == tmp_path / "nfs"
    assert shared.imports_dir == tmp_path / "nfs" / ".imports"
