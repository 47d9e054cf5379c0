"""The health report every KAT service answers on ``GET /health``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ServiceHealth(BaseModel):
    model_config = ConfigDict(extra="allow")

    service: str
    healthy: bool = False
    version: str | None = None
    additional: Any = None
    results: list[ServiceHealth] = Field(default_factory=list)
