"""ConfigService: the effective settings (secrets redacted), and changes to them that are
validated by the Settings model, saved to the data dir's config.toml and applied at once.

Which settings apply when is decided here, once (APPLIES); the rules a value must follow
stay in config.py's models.
"""

from __future__ import annotations

import copy
import difflib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any, Literal, get_args, get_origin
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ValidationError

from studyrag.admin.toml_file import read_toml, update_toml
from studyrag.config import Settings
from studyrag.errors import (
    InvalidSetting,
    SettingNotChangeable,
    StudyRAGError,
    UnknownSetting,
)
from studyrag.schemas.admin import Applies, ConfigPublic, ConfigUpdated, SettingPublic

log = logging.getLogger(__name__)

REDACTED = "********"

# Section or "section.field" -> when a change takes effect. The most specific entry wins;
# anything not listed needs a restart. "now" entries are read live by their owners (the
# chat engine, search, ingestion read the same settings objects on every request).
APPLIES: dict[str, Applies] = {
    "chat": "now",
    "search": "now",
    "llm.max_tokens": "now",
    "llm.temperature": "now",
    "ingest.max_file_size_mb": "now",
    "ingest.chunk_size": "now",
    "ingest.chunk_overlap": "now",
    "ingest.loader": "now",
    "log_level": "now",
    "llm.n_ctx": "model_load",
    "llm.n_threads": "model_load",
    "llm.seed": "model_load",
    "llm.timeout": "model_load",
    "llm.ollama_url": "model_load",
    "llm.openai_base_url": "model_load",
    "llm.openai_api_key": "model_load",
    "llm.models_cache_ttl": "model_load",
    "embeddings.batch_size": "model_load",
    "embeddings.device": "model_load",
    "embeddings.ollama_url": "model_load",
    "embeddings.max_tokens": "model_load",
    # Checked and loaded by the model switch, never set blindly.
    "llm.provider": "model_switch",
    "llm.model": "model_switch",
    "llm.model_path": "model_switch",
    "embeddings.provider": "model_switch",
    "embeddings.model": "model_switch",
}
SECRET_KEYS = frozenset({"llm.openai_api_key"})
# Values that may be server paths: HTTP answers show them relative to the data directory.
PATH_KEYS = frozenset({"data_dir", "config_file", "llm.model_path", "embeddings.model"})
DATA_DIR_MARK = "<data dir>"
# URLs whose password (user:password@host) is redacted.
URL_KEYS = frozenset(
    {
        "database.url",
        "vectors.url",
        "broker.url",
        "llm.ollama_url",
        "llm.openai_base_url",
        "embeddings.ollama_url",
    }
)


def applies(key: str) -> Applies:
    """When a change of `key` takes effect."""
    return APPLIES.get(key) or APPLIES.get(key.split(".", 1)[0]) or "restart"


def redact_url(url: str) -> str:
    """`url` with the password of its user part replaced."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:{REDACTED}@{host}"))


def setting_keys(settings: Settings) -> Iterator[tuple[str, str, str | None]]:
    """(dotted key, top-level field, section field or None) for every setting."""
    for name, value in settings:
        if isinstance(value, BaseModel):
            for field in type(value).model_fields:
                yield f"{name}.{field}", name, field
        else:
            yield name, name, None


class ConfigService:
    """Reads and changes the settings of one running app (or, from the CLI, of the file)."""

    def __init__(
        self,
        settings: Settings,
        *,
        live: bool = True,
        on_change: Callable[[set[str]], None] | None = None,
    ) -> None:
        # `live`: a running server's settings, which it reads on every request; the CLI
        # without a server has nothing to apply to and may also save restart settings.
        self.settings = settings
        self.live = live
        self.on_change = on_change

    @property
    def path(self) -> str:
        return str(self.settings.saved_config_path)

    def shown_path(self, value: Any, *, reveal: bool) -> Any:
        """A path as a response may show it: within the data dir, or its last part only."""
        if reveal or not isinstance(value, str) or not value or os.sep not in value:
            return value
        data = str(self.settings.data_dir)
        if value == data:
            return DATA_DIR_MARK
        if value.startswith(data + os.sep):
            return DATA_DIR_MARK + value[len(data) :]
        return "…" + os.sep + os.path.basename(value.rstrip(os.sep))

    # --- reading ---------------------------------------------------------------------
    def describe(self, *, reveal_paths: bool = True) -> ConfigPublic:
        """Every effective setting, secrets redacted, with when a change takes effect.

        HTTP answers pass reveal_paths=False: no response shows where the server keeps its
        files beyond the data directory's own layout.
        """
        return ConfigPublic(
            path=self.shown_path(self.path, reveal=reveal_paths),
            settings=self._settings_public(reveal_paths),
        )

    def _settings_public(self, reveal_paths: bool = True) -> list[SettingPublic]:
        saved = _flatten(read_toml(self.settings.saved_config_path))
        defaults = _defaults()
        out: list[SettingPublic] = []
        for key, top, field in setting_keys(self.settings):
            section = getattr(self.settings, top)
            value = getattr(section, field) if field else section
            default = defaults.get(key)
            when = applies(key)
            secret = key in SECRET_KEYS
            source = "default"
            if _env_name(key) in _environment():
                source = "env"
            elif key in saved:
                source = "file"
            elif _plain(value) != _plain(default):
                source = "arguments"
            shown = _redact(key, _plain(value))
            if key in PATH_KEYS:
                shown = self.shown_path(shown, reveal=reveal_paths)
            out.append(
                SettingPublic(
                    key=key,
                    value=shown,
                    default=_redact(key, _plain(default)),
                    applies=when,
                    restart_required=when == "restart",
                    secret=secret,
                    source=source,
                    choices=_choices(top, field),
                )
            )
        return out

    def get(self, key: str) -> Any:
        """One setting's effective value (not redacted: for in-process callers)."""
        top, field = self._split(key)
        section = getattr(self.settings, top)
        return getattr(section, field) if field else section

    # --- changing --------------------------------------------------------------------
    def update(
        self,
        changes: dict[str, Any],
        *,
        allow_model_keys: bool = False,
        reveal_paths: bool = True,
    ) -> ConfigUpdated:
        """Validate every change, save them to the file, then apply them; all or nothing.

        Refused: unknown keys (CONFIG_003), invalid values (CONFIG_004), and keys this caller
        may not change (CONFIG_005): model choices (the model switch checks and loads them)
        and, on a running server, settings that need a restart.
        """
        if not changes:
            raise InvalidSetting("No change was given.", hint='Send {"changes": {"key": value}}.')
        keys = {k: self._split(k) for k in changes}  # UnknownSetting first, for every key
        refused = [
            k
            for k in changes
            if (applies(k) == "model_switch" and not allow_model_keys)
            or (applies(k) == "restart" and self.live)
        ]
        if refused:
            raise self._not_changeable(refused)
        candidate = self._validated(changes, keys)
        # Saved first: if the file cannot be written, nothing changed anywhere.
        saved = {
            tuple(k.split(".")): _plain(self._value_of(candidate, *keys[k]))
            for k in changes
            if not _unchanged_secret(k, changes[k])
        }
        if saved:
            update_toml(self.settings.saved_config_path, saved)
        applied, later, restart = self._apply(candidate, changes, keys)
        env = _environment()
        warnings = [
            f"{_env_name(k)} is set in the environment: it wins over config.toml at the next start."
            for k in changes
            if _env_name(k) in env
        ]
        log.info("configuration changed: %s", ", ".join(sorted(changes)))
        return ConfigUpdated(
            path=self.shown_path(self.path, reveal=reveal_paths),
            settings=self._settings_public(reveal_paths),
            applied=applied,
            on_model_load=later,
            on_restart=restart,
            warnings=warnings,
        )

    def _split(self, key: str) -> tuple[str, str | None]:
        known = {k: (top, field) for k, top, field in setting_keys(self.settings)}
        if not isinstance(key, str) or key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=3)
            hint = (
                f"Did you mean {', '.join(close)}? " if close else ""
            ) + "List the settings with GET /api/config or `studyrag config show`."
            raise UnknownSetting(
                f"There is no setting {key!r}.",
                details={"key": key, "suggestions": close},
                hint=hint,
            )
        return known[key]

    def _not_changeable(self, keys: list[str]) -> SettingNotChangeable:
        models = [k for k in keys if applies(k) == "model_switch"]
        if models:
            return SettingNotChangeable(
                f"{', '.join(models)} choose{'s' if len(models) == 1 else ''} a model; it is "
                "changed by the model switch, which checks that the model exists and loads it.",
                details={"keys": keys},
                hint="Use POST /api/models/switch {role, provider, model} or "
                "`studyrag models use NAME`.",
            )
        return SettingNotChangeable(
            f"{', '.join(keys)} cannot change while the server runs: "
            f"{'it needs' if len(keys) == 1 else 'they need'} a restart.",
            details={"keys": keys, "restart_required": True},
            hint="Stop the server, run `studyrag config set KEY VALUE` (or edit config.toml "
            "in the data directory), then start it again.",
        )

    def _validated(
        self, changes: dict[str, Any], keys: dict[str, tuple[str, str | None]]
    ) -> Settings:
        """A deep copy of the settings with the changes, each checked by its model."""
        candidate = self.settings.model_copy(deep=True)
        errors: list[dict[str, Any]] = []
        for key, value in changes.items():
            if _unchanged_secret(key, value):
                continue
            top, field = keys[key]
            target: BaseModel = getattr(candidate, top) if field else candidate
            name = field or top
            try:
                type(target).__pydantic_validator__.validate_assignment(target, name, value)
            except ValidationError as exc:
                for e in exc.errors(include_url=False):
                    errors.append({"key": key, "value": _plain(value), "message": e["msg"]})
        if not errors:
            errors.extend(_domain_errors(candidate, changes))
        if errors:
            listed = "; ".join(f"{e['key']}: {str(e['message']).rstrip('.')}" for e in errors)
            raise InvalidSetting(
                f"Invalid setting{'s' if len(errors) > 1 else ''}: {listed}.",
                details={"errors": errors},
                hint="Fix the value; nothing was changed. GET /api/config shows the current "
                "values and defaults.",
            )
        return candidate

    @staticmethod
    def _value_of(settings: Settings, top: str, field: str | None) -> Any:
        section = getattr(settings, top)
        return getattr(section, field) if field else section

    def _apply(
        self,
        candidate: Settings,
        changes: dict[str, Any],
        keys: dict[str, tuple[str, str | None]],
    ) -> tuple[list[str], list[str], list[str]]:
        applied: list[str] = []
        later: list[str] = []
        restart: list[str] = []
        for key in changes:
            when = applies(key)
            if when == "restart":
                restart.append(key)
                if self.live:
                    continue
            top, field = keys[key]
            value = self._value_of(candidate, top, field)
            # Set on the live objects, which the engine, search and ingestion hold.
            target = getattr(self.settings, top) if field else self.settings
            setattr(target, field or top, value)
            (applied if when == "now" else later if when != "restart" else []).append(key)
        if "log_level" in changes and self.live:
            logging.getLogger().setLevel(self.settings.log_level.upper())
        if self.on_change is not None:
            self.on_change(set(changes))
        return applied, later, restart


def _domain_errors(candidate: Settings, changes: dict[str, Any]) -> list[dict[str, Any]]:
    """Rules that span settings: owned by their modules, checked here before anything is saved."""
    errors: list[dict[str, Any]] = []
    if {"chat.template", "chat.templates"} & changes.keys():
        from studyrag.chat.prompts import available_templates, check_template_name

        try:
            templates = available_templates(candidate.chat.templates)
            check_template_name(candidate.chat.template, templates)
        except StudyRAGError as exc:
            errors.append({"key": "chat.template", "message": exc.message})
    if "log_level" in changes:
        level = logging.getLevelName(str(candidate.log_level).upper())
        if not isinstance(level, int):
            errors.append(
                {
                    "key": "log_level",
                    "message": "must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
                }
            )
    return errors


def _unchanged_secret(key: str, value: Any) -> bool:
    """A secret sent back redacted (a form that shows every setting) keeps its value."""
    return key in SECRET_KEYS and value == REDACTED


def _redact(key: str, value: Any) -> Any:
    if key in SECRET_KEYS and value:
        return REDACTED
    if key in URL_KEYS and isinstance(value, str) and value:
        return redact_url(value)
    return value


def _plain(value: Any) -> Any:
    """A JSON/TOML-ready value (paths as strings, models as dicts)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict | list | str | int | float | bool) or value is None:
        return copy.deepcopy(value)
    return str(value)


def _choices(top: str, field: str | None) -> list[str] | None:
    """The values a `Literal[...]` setting accepts, in the order the model declares them."""
    info = Settings.model_fields[top]
    if field is not None:
        section = info.annotation
        if not (isinstance(section, type) and issubclass(section, BaseModel)):
            return None
        info = section.model_fields[field]
    annotation = info.annotation
    if get_origin(annotation) is not Literal:
        return None
    return [str(value) for value in get_args(annotation)]


def _defaults() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, info in Settings.model_fields.items():
        if name in ("data_dir", "config_file"):
            out[name] = None  # depend on the machine
            continue
        default = info.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            for field, value in default:
                out[f"{name}.{field}"] = value
        else:
            out[name] = default
    return out


def _flatten(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in data.items():
        if isinstance(value, dict) and name in Settings.model_fields:
            sub = Settings.model_fields[name].annotation
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                for field, inner in value.items():
                    out[f"{name}.{field}"] = inner
                continue
        out[name] = value
    return out


def _env_name(key: str) -> str:
    return "STUDYRAG_" + key.replace(".", "__").upper()


def _environment() -> set[str]:
    return {k.upper() for k in os.environ if k.upper().startswith("STUDYRAG_")}
