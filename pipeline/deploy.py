"""The two deployments of the `augment` flow: a nightly cron schedule and a manual one.

`ganaug serve` builds both with `Flow.to_deployment` and serves them with
`prefect.serve` in one process, which polls the Prefect API (`PREFECT_API_URL`)
for due runs and executes them; it blocks until interrupted.
"""
from __future__ import annotations

from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron

from pipeline.flow import augment
from pipeline.run_params import AugmentParams

NIGHTLY = "ganaug-nightly"
MANUAL = "ganaug-manual"
DEFAULT_CRON = "0 2 * * *"  # 02:00 every night
DEFAULT_TIMEZONE = "UTC"
TAGS = ["ganaug"]


def build_deployments(params: AugmentParams, cron: str = DEFAULT_CRON,
                      timezone: str = DEFAULT_TIMEZONE) -> list[RunnerDeployment]:
    """[nightly (cron schedule), manual (no schedule)], both running `augment` with `params`."""
    common = {"parameters": {"params": params.model_dump(mode="json")}, "tags": TAGS,
              # `pipeline.flow:augment`, importable wherever ganaug is installed (or from the project root)
              "entrypoint_type": EntrypointType.MODULE_PATH}
    nightly = augment.to_deployment(
        name=NIGHTLY, schedule=Cron(cron, timezone=timezone), **common,
        description=f"ganaug pipeline on {params.repo}, on the schedule `{cron}` ({timezone}).")
    manual = augment.to_deployment(
        name=MANUAL, **common,
        description=f"ganaug pipeline on {params.repo}, on demand: "
                    f"`prefect deployment run augment/{MANUAL}` (parameters can be changed per run).")
    return [nightly, manual]


def serve_deployments(params: AugmentParams, cron: str = DEFAULT_CRON, timezone: str = DEFAULT_TIMEZONE) -> None:
    """Serve both deployments until interrupted."""
    from prefect import serve

    serve(*build_deployments(params, cron, timezone))
