"""Annotated dependencies: routes receive live services, never build them."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from studyrag.admin.config import ConfigService
from studyrag.admin.models import ModelService
from studyrag.auth.policy import ADMIN, CHAT, PUBLIC, READ, SIGNED_IN, WRITE, Access, Principal
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


def get_access(services: ServicesDep) -> Access:
    return services.auth.access


AccessDep = Annotated[Access, Depends(get_access)]
# The principal of a request, under the route's declared policy (auth/policy.py).
ReadDep = Annotated[Principal, Depends(READ)]
ChatDep = Annotated[Principal, Depends(CHAT)]
WriteDep = Annotated[Principal, Depends(WRITE)]
SignedInDep = Annotated[Principal, Depends(SIGNED_IN)]
PublicDep = Annotated[Principal, Depends(PUBLIC)]
AdminDep = Annotated[Principal, Depends(ADMIN)]
