"""What the flow reports: one result per stage, and the run as a whole."""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel


class StageResult(BaseModel):
    """What DVC did with one stage."""

    stage: str
    status: Literal["ran", "skipped"]
    detail: str          # "ran", "up to date", "restored from run cache", ...
    seconds: float       # wall time of the `dvc repro` call
    started: float       # epoch seconds
    finished: float

    def outcome(self) -> str:
        """`ran`, or `skipped (up to date)` / `skipped (restored from run cache)`."""
        return self.status if self.status == "ran" else f"{self.status} ({self.detail})"


class RunSummary(BaseModel):
    """The outcome of one `augment` flow run."""

    project: str
    workspace: str
    experiment: Optional[str]
    overrides: dict[str, Any]
    stages: list[StageResult]
    seconds: float

    @property
    def ran(self) -> list[str]:
        return [r.stage for r in self.stages if r.status == "ran"]

    @property
    def skipped(self) -> list[str]:
        return [r.stage for r in self.stages if r.status == "skipped"]

    def status_of(self) -> dict[str, str]:
        return {r.stage: r.status for r in self.stages}
