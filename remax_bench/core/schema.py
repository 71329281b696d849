"""The base of every suite block: strict types, unknown keys rejected, assignments validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)
