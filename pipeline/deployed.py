"""`ganaug-pipeline`: the flow `prefect.yaml` deploys, with flat parameters.

Prefect users trigger deployments with `--param key=value`; so this flow takes
the run's settings as flat parameters (`shots`, `set`, `exp_name`, ...), builds
the same validated `AugmentParams` as `ganaug run`, and runs the same body as
the `augment` flow (`pipeline.flow.run_pipeline`):

    prefect deployment run ganaug-pipeline/manual --param shots=5 --param 'set=["gan.steps=500"]'

An invalid setting fails the flow run before any stage runs, naming the key.
"""
from __future__ import annotations

from typing import Optional

from prefect import flow
from pydantic import ValidationError

from pipeline.flow import run_name, run_pipeline
from pipeline.models import RunSummary
from pipeline.overrides import OverrideError, parse_assignment
from pipeline.run_params import AugmentParams


def flat_params(repo: str = ".", shots: Optional[int] = None, set: Optional[list[str]] = None,
                exp_name: Optional[str] = None, retries: int = 2, retry_delay_seconds: float = 10.0,
                parallel: bool = False, stage_timeout_seconds: Optional[float] = None,
                run_timeout_seconds: Optional[float] = None) -> AugmentParams:
    """The flat parameters as `AugmentParams`; ValueError with one readable line when one is wrong."""
    try:
        overrides = dict(parse_assignment(a) for a in (set or []))
        if shots is not None:
            overrides["data.shots"] = shots
        return AugmentParams(repo=repo, overrides=overrides, experiment_name=exp_name, retries=retries,
                             retry_delay_seconds=retry_delay_seconds, parallel=parallel,
                             stage_timeout_seconds=stage_timeout_seconds, run_timeout_seconds=run_timeout_seconds)
    except (OverrideError, ValidationError) as exc:
        raise ValueError(str(exc).splitlines()[0] if isinstance(exc, OverrideError) else
                         "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())) from None


def _run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    overrides = {"data.shots": p["shots"]} if p.get("shots") is not None else {}
    overrides.update({a.partition("=")[0]: a.partition("=")[2] for a in p.get("set") or []})
    return run_name(p.get("repo", "."), overrides, p.get("exp_name"))


@flow(name="ganaug-pipeline", flow_run_name=_run_name,
      description="ganaug: the DVC stages of dvc.yaml in DAG order, one task per stage (flat parameters).")
def ganaug_pipeline(repo: str = ".", shots: Optional[int] = None, set: Optional[list[str]] = None,
                    exp_name: Optional[str] = None, retries: int = 2, retry_delay_seconds: float = 10.0,
                    parallel: bool = False, stage_timeout_seconds: Optional[float] = None,
                    run_timeout_seconds: Optional[float] = None) -> RunSummary:
    """Run the pipeline of the project at `repo` (the deployment's working directory by default).

    shots: data.shots for this run. set: params.yaml overrides, "KEY=VALUE" each. A run with either is a
    DVC experiment (named `exp_name`, or by DVC), and params.yaml is left alone. retries, retry_delay_seconds:
    per failing stage (a user error is never retried). stage_timeout_seconds: per stage try;
    run_timeout_seconds: the whole run.
    """
    return run_pipeline(flat_params(repo, shots, set, exp_name, retries, retry_delay_seconds, parallel,
                                    stage_timeout_seconds, run_timeout_seconds))


def _cell_run_name() -> str:
    from prefect.runtime import flow_run

    return f"sweep cell {(flow_run.parameters.get('cell') or {}).get('name', '?')}"


@flow(name="ganaug-sweep-cell", flow_run_name=_cell_run_name,
      description="One cell of a `ganaug sweep`: the pipeline with the cell's overrides, saved as a DVC experiment.")
def sweep_cell(cell: dict, repo: str = ".", threads: Optional[int] = None, git_url: Optional[str] = None) -> dict:
    """Run the sweep cell `cell` ({name, overrides}) in the project at `repo` (or a clone of `git_url`), unless its
    experiment exists. threads: torch threads per stage (default: the worker's GANAUG_THREADS or all cores)."""
    from pipeline.dvc_cli import terminate_children_on_sigterm
    from pipeline.sweep_cell import run_cell

    terminate_children_on_sigterm()  # a cancelled run takes its `dvc repro` and stage with it
    return run_cell(repo, cell, threads, git_url)
