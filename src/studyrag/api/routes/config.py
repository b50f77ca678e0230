"""Settings over HTTP: the effective configuration, and changes applied without a restart."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from studyrag.api.deps import ConfigDep
from studyrag.auth.policy import ADMIN
from studyrag.schemas.admin import ConfigPublic, ConfigUpdate, ConfigUpdated

router = APIRouter(prefix="/api/config", tags=["config"], dependencies=[Depends(ADMIN)])


@router.get("", response_model=ConfigPublic)
async def get_config(config: ConfigDep) -> ConfigPublic:
    """Every setting, secrets redacted, each with when a change takes effect."""
    return config.describe(reveal_paths=False)


@router.put("", response_model=ConfigUpdated)
async def put_config(body: ConfigUpdate, config: ConfigDep) -> ConfigUpdated:
    """Validate, save to config.toml and apply the changes; all or nothing."""
    return config.update(body.changes, reveal_paths=False)
