"""Annotated dependencies: routes receive live services, never build them."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from studyrag.admin.config import ConfigService
from studyrag.admin.models import ModelService
from studyrag.services import Services


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_config(services: ServicesDep) -> ConfigService:
    assert services.config is not None, "open_services builds the config service"
    return services.config


def get_models(services: ServicesDep) -> ModelService:
    assert services.models is not None, "open_services builds the model service"
    return services.models


ConfigDep = Annotated[ConfigService, Depends(get_config)]
ModelsDep = Annotated[ModelService, Depends(get_models)]
