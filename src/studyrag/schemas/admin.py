"""Settings and models as GET/PUT /api/config, /api/models and the CLI's --json show them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from studyrag.schemas.base import PublicModel

# now: applied at once; model_load: when a model is next loaded (a switch);
# model_switch: only through POST /api/models/switch; restart: at the next start.
Applies = Literal["now", "model_load", "model_switch", "restart"]
Role = Literal["chat", "embedding"]


class SettingPublic(PublicModel):
    """One effective setting."""

    key: str  # dotted: "chat.top_k", "log_level"
    value: Any  # secrets redacted
    default: Any
    applies: Applies
    restart_required: bool
    secret: bool = False
    # env | file | default | arguments (given to create_app)
    source: str = "default"
    # The accepted values of a setting that takes one of a fixed set (a form shows a list).
    choices: list[str] | None = None


class ConfigPublic(PublicModel):
    """GET /api/config."""

    path: str  # the file PUT writes to
    settings: list[SettingPublic]


class ConfigUpdate(BaseModel):
    """PUT /api/config: {"changes": {"chat.top_k": 8, ...}}; all or nothing."""

    model_config = ConfigDict(extra="forbid")

    changes: dict[str, Any] = Field(min_length=1, max_length=200)


class ConfigUpdated(ConfigPublic):
    """PUT /api/config's answer: the new settings and what happened to each change."""

    applied: list[str] = Field(default_factory=list)  # in effect now
    on_model_load: list[str] = Field(default_factory=list)  # at the next model load
    on_restart: list[str] = Field(default_factory=list)  # saved, at the next start (CLI)
    warnings: list[str] = Field(default_factory=list)


class ModelPublic(PublicModel):
    """A chat or embedding model one provider can serve."""

    role: Role
    provider: str
    name: str  # what `studyrag models use` and POST /api/models/switch take
    available: bool
    active: bool
    size: int | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class ProviderStatus(PublicModel):
    """Whether a provider could be asked for its models."""

    role: Role
    provider: str
    reachable: bool
    url: str | None = None
    error: dict[str, Any] | None = None


class ModelsPublic(PublicModel):
    """GET /api/models."""

    chat: list[ModelPublic]
    embedding: list[ModelPublic]
    providers: list[ProviderStatus]
    # An embedding-model switch running now (its job id), or None.
    switching_job_id: str | None = None


class ModelSwitch(BaseModel):
    """POST /api/models/switch."""

    model_config = ConfigDict(extra="forbid")

    role: Role = "chat"
    provider: str | None = Field(default=None, max_length=64)
    model: str = Field(min_length=1, max_length=1000)


class ModelSwitched(PublicModel):
    """The switch's answer: done (chat) or started as a job (embedding)."""

    role: Role
    provider: str
    name: str
    status: Literal["active", "reindexing"]
    job_id: str | None = None
    previous: dict[str, str] = Field(default_factory=dict)


class ModelPull(BaseModel):
    """POST /api/models/pull."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=300)
