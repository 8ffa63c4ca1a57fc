"""The `augment` Prefect flow: the stages of dvc.yaml in DAG order, one task per stage, run by DVC.

Each task is `dvc --wait-for-lock repro --single-item <stage>`: DVC decides
whether the stage is stale, runs it or skips it (up to date, or restored from
its run cache), and the task reports which. Stage output is streamed into the
Prefect log line by line; a failing stage is retried with exponential back-off
and, when the retries are spent, fails the flow with the tail of its stderr.
"""
from __future__ import annotations

import os
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Callable, Optional

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.tasks import Task, exponential_backoff

from pipeline.dag import StageDag, read_dag
from pipeline.dvc_cli import describe, dvc_args, run_streaming
from pipeline.models import RunSummary, StageResult
from pipeline.overrides import format_overrides
from pipeline.report import publish
from pipeline.run_params import AugmentParams
from pipeline.workspace import (
    Workspace, WorkspaceError, experiment_exists, experiment_workspace, find_project, project_workspace,
    save_experiment,
)

STDERR_TAIL_IN_ERROR = 20


class StageFailed(RuntimeError):
    """`dvc repro` of a stage exited non-zero; the message ends with the stage's stderr tail."""


def classify(stdout: list[str]) -> tuple[str, str]:
    """(status, detail) from `dvc repro --single-item` output."""
    if any(line.startswith("Running stage '") for line in stdout):
        return "ran", "ran"
    if any("is cached - skipping run" in line for line in stdout):
        return "skipped", "restored from run cache"
    if any("didn't change, skipping" in line for line in stdout):
        return "skipped", "up to date"
    return "skipped", "nothing to do"


@task(name="dvc-stage", task_run_name="{stage}", cache_policy=NO_CACHE, tags=["ganaug"])
def run_stage(stage: str, workdir: str, threads: Optional[int] = None) -> StageResult:
    """`dvc repro --single-item stage` in `workdir`, its output streamed into the Prefect log.

    `threads`: the stage's torch threads (`GANAUG_THREADS`), when stages share the cores.
    """
    logger = get_run_logger()
    args = dvc_args("repro", "--single-item", stage)
    logger.info("$ %s   (in %s)", describe(args), workdir)

    def log_line(stream: str, line: str) -> None:
        if line.strip():
            logger.info("%s%s", "[stderr] " if stream == "stderr" else "", line)

    started = time.time()
    out = run_streaming(args, Path(workdir), log_line, {"GANAUG_THREADS": str(threads)} if threads else None)
    finished = time.time()
    if out.returncode != 0:
        tail = "\n".join(out.stderr_tail[-STDERR_TAIL_IN_ERROR:]) or "(no stderr)"
        logger.error("stage %s failed (dvc exit %d); last stderr lines:\n%s", stage, out.returncode, tail)
        raise StageFailed(f"stage '{stage}' failed (dvc exit {out.returncode}); last stderr lines:\n{tail}")
    status, detail = classify(out.stdout)
    result = StageResult(stage=stage, status=status, detail=detail, seconds=round(finished - started, 3),
                         started=started, finished=finished)
    logger.info("stage %s: %s in %.1f s", stage, result.outcome(), result.seconds)
    return result


def stage_task(params: AugmentParams) -> Task:
    """`run_stage` with this run's retry policy: `retries` tries, delays doubling from `retry_delay_seconds`."""
    delays = exponential_backoff(params.retry_delay_seconds)(params.retries) if params.retries else 0
    return run_stage.with_options(retries=params.retries, retry_delay_seconds=delays)


def run_stages(task_: Task, dag: StageDag, workdir: Path, parallel: bool) -> list[StageResult]:
    """Every stage in DAG order; with `parallel`, submitted at once, each waiting for its upstream stages."""
    if not parallel:
        return [task_(stage, str(workdir)) for stage in dag.order]
    futures: dict[str, Any] = {}
    threads = stage_threads(dag)
    for stage in dag.order:
        upstream = [futures[u] for u in dag.upstream[stage]]
        futures[stage] = task_.submit(stage, str(workdir), threads, wait_for=upstream)
    wait(list(futures.values()))  # nothing may still run when the workspace goes away
    return [futures[stage].result() for stage in dag.order]


def stage_threads(dag: StageDag) -> Optional[int]:
    """Torch threads per stage when independent stages run at once: the cores split over the widest DAG level.

    None (each stage takes torch's default) when `GANAUG_THREADS` is already set or no level has two stages.
    """
    width = max(len(level) for level in dag.levels())
    if os.environ.get("GANAUG_THREADS") or width < 2:
        return None
    return max(1, (os.cpu_count() or 1) // width)


def open_workspace(project: Path, params: AugmentParams,
                   log: Callable[[str], None]) -> AbstractContextManager[Workspace]:
    if params.is_experiment:
        return experiment_workspace(project, params.overrides, log)
    return project_workspace(project, log)


@flow(name="augment", description="ganaug: the DVC stages of dvc.yaml in DAG order, one task per stage.")
def augment(params: AugmentParams = AugmentParams()) -> RunSummary:
    """Run (or skip, as DVC decides) every stage of the project's dvc.yaml; publish the report artifacts."""
    logger = get_run_logger()
    project = find_project(params.repo)
    if params.experiment_name and experiment_exists(project, params.experiment_name):
        raise WorkspaceError(f"experiment_name {params.experiment_name!r}: {project} already has one so named")
    logger.info("overrides: %s", format_overrides(params.overrides))
    with open_workspace(project, params, logger.info) as ws:
        started = time.monotonic()  # after waiting for another run's lock, if there was one
        dag = read_dag(ws.root)
        logger.info("stages in DAG order: %s", " | ".join(", ".join(level) for level in dag.levels()))
        results = run_stages(stage_task(params), dag, ws.root, params.parallel)
        experiment = save_experiment(ws, params.experiment_name, logger.info) if ws.is_experiment else None
        summary = RunSummary(project=str(project), workspace=str(ws.root), experiment=experiment,
                             overrides=params.overrides, stages=results,
                             seconds=round(time.monotonic() - started, 3))
        publish(summary, ws.root)
    width = max(len(r.stage) for r in results)
    for r in results:
        logger.info("%-*s %7.1f s  %s", width, r.stage, r.seconds, r.outcome())
    if experiment:
        logger.info("saved as DVC experiment %r: `dvc exp show` lists it, `dvc exp apply %s` restores it",
                    experiment, experiment)
    return summary


def dask_task_runner(address: Optional[str] = None, threads: int = 4):
    """A Dask task runner: the cluster at `address`, else a local in-process cluster with `threads` threads.

    Stage work happens in DVC subprocesses, so threads are enough locally; a
    remote cluster's workers must see the project at the same path.
    """
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": 1, "threads_per_worker": threads, "processes": False})
