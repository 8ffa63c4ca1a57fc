"""The `augment` flow's parameters: one pydantic model, validated by Prefect before the run starts.

An invalid override (unknown key, value the params schema refuses) makes the
model invalid, so Prefect fails the flow run before any stage runs, with a
message that names the key.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.overrides import OverrideError, check_key, validate_overrides

_EXP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class AugmentParams(BaseModel):
    """What one run of the ganaug pipeline should do."""

    model_config = ConfigDict(extra="forbid")

    repo: str = Field(".", description="The ganaug project: a git repository with dvc.yaml and params.yaml.")
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="params.yaml values for this run only, dotted keys, e.g. {\"data.shots\": 5}. "
                    "A run with overrides runs in its own experiment workspace and is saved as a DVC experiment.",
    )
    experiment_name: Optional[str] = Field(
        None, description="Name of the DVC experiment to save (implies an experiment run); default: DVC picks one.")
    retries: int = Field(2, ge=0, le=50, description="Retries of a failing stage.")
    retry_delay_seconds: float = Field(
        10.0, ge=0, description="Delay before the first retry; it doubles for every further retry.")
    parallel: bool = Field(
        False, description="Submit independent stages (e.g. the finetune variants) to the task runner at once.")
    stage_timeout_seconds: Optional[float] = Field(
        None, gt=0, description="Stop a stage try (and its processes) after this many seconds; default: no limit.")
    run_timeout_seconds: Optional[float] = Field(
        None, gt=0, description="Stop the whole run (its stages' processes) after this many seconds; default: no limit.")

    @field_validator("overrides")
    @classmethod
    def _keys_are_paths(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            _as_value_error(check_key, key)
        return value

    @field_validator("experiment_name")
    @classmethod
    def _git_ref_safe(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and (not _EXP_NAME.match(value) or ".." in value or value.endswith((".", ".lock"))):
            raise ValueError(f"experiment_name {value!r}: use letters, digits, '.', '_' and '-'")
        return value

    @model_validator(mode="after")
    def _overrides_fit_schema(self) -> "AugmentParams":
        if self.overrides:
            _as_value_error(validate_overrides, Path(self.repo), self.overrides)
        return self

    @property
    def is_experiment(self) -> bool:
        """Runs with overrides (or a name) go to an experiment workspace, not the user's workspace."""
        return bool(self.overrides) or self.experiment_name is not None


def _as_value_error(check, *args) -> Any:
    """Pydantic reports ValueErrors as validation errors; turn our one-line errors into those."""
    try:
        return check(*args)
    except OverrideError as exc:
        raise ValueError(str(exc)) from None
