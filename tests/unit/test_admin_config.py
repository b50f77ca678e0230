"""The config file writer and the redaction rules, without a server."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from studyrag.admin.config import ConfigService, applies, redact_url
from studyrag.admin.toml_file import dumps, update_toml
from studyrag.config import Settings
from studyrag.errors import ConfigError, InvalidSetting


def test_dumps_round_trips_nested_tables_and_awkward_strings() -> None:
    data = {
        "log_level": "INFO",
        "chat": {"top_k": 8, "templates": {"MY TPL": 'say "hi"\n{question}\t\\'}},
        "search": {"semantic_weight": 1.5, "rrf": True, "modes": ["a", "b"]},
        "custom": {"deep": {"deeper": {"x": -3}}},
    }
    assert tomllib.loads(dumps(data)) == data


def test_update_keeps_other_keys_and_writes_atomically(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[custom]\nkeep = "me"\n[chat]\ntop_k = 3\n')
    update_toml(path, {("chat", "top_k"): 9, ("search", "mode"): "lexical"})
    assert tomllib.loads(path.read_text()) == {
        "custom": {"keep": "me"},
        "chat": {"top_k": 9},
        "search": {"mode": "lexical"},
    }
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]  # no temporary file left


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[chat\n")
    with pytest.raises(ConfigError):
        update_toml(path, {("chat", "top_k"): 9})
    assert path.read_text() == "[chat\n"


def test_redaction() -> None:
    assert redact_url("redis://:s3cret@cache:6379/0") == "redis://:********@cache:6379/0"
    assert redact_url("postgresql+asyncpg://me:pw@db/x") == "postgresql+asyncpg://me:********@db/x"
    assert redact_url("http://127.0.0.1:11434") == "http://127.0.0.1:11434"
    assert applies("chat.top_k") == "now" and applies("database.url") == "restart"
    assert applies("llm.model") == "model_switch" and applies("llm.seed") == "model_load"


def test_several_bad_values_are_all_reported_and_nothing_changes(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    service = ConfigService(settings)
    with pytest.raises(InvalidSetting) as info:
        service.update({"chat.top_k": 0, "search.mode": "magic", "search.top_k": 4})
    assert [e["key"] for e in info.value.details["errors"]] == ["chat.top_k", "search.mode"]
    assert settings.search.top_k == 10 and not (tmp_path / "config.toml").exists()
    secret = Settings(data_dir=tmp_path, llm={"openai_api_key": "sk-1"})
    listed = {s.key: s.value for s in ConfigService(secret).describe().settings}
    assert listed["llm.openai_api_key"] == "********"
    # A form that sends every value back keeps the secret as it was.
    ConfigService(secret).update({"llm.openai_api_key": "********", "chat.top_k": 6})
    assert secret.llm.openai_api_key == "sk-1" and secret.chat.top_k == 6
