"""The `augment` Prefect flow: the stages of dvc.yaml in DAG order, one task per stage, run by DVC.

Each task is `dvc --wait-for-lock repro --single-item <stage>`: DVC decides
whether the stage is stale, runs it or skips it (up to date, or restored from
its run cache), and the task reports which, from `dvc.lock` and the stage's
outputs (`pipeline/outcome.py`). Stage output is streamed into the
Prefect log line by line; a failing stage is retried with exponential back-off
and, when the retries are spent, fails the flow with the tail of its stderr.
A stage that exits with the user-error code (2: bad params, bad data; one line
on stderr) is not retried: trying again cannot help. `stage_timeout_seconds`
bounds each try, `run_timeout_seconds` the whole run. A stage that times out, or whose flow run is cancelled or
killed, is stopped with its whole process group (`pipeline/dvc_cli.py`).
"""
from __future__ import annotations

import os
import re
import threading
import time
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.tasks import Task, exponential_backoff

from pipeline.dag import StageDag, read_dag
from pipeline.dvc_cli import (STOPPED, describe, dvc_args, run_streaming, stop_all, stop_reason,
                              terminate_children_on_sigterm, thread_share)
from pipeline.models import RunSummary, StageResult
from pipeline.outcome import classify, snapshot
from pipeline.overrides import format_overrides
from pipeline.report import publish
from pipeline.run_params import AugmentParams
from pipeline.workspace import (
    Workspace, WorkspaceError, experiment_exists, experiment_workspace, find_project, project_workspace,
    save_experiment,
)

STDERR_TAIL_IN_ERROR = 20


USER_ERROR_EXIT = 2  # ganaug/config/errors.py: a stage's exit code for the user's mistakes
_STAGE_EXIT = re.compile(r"failed to run: .*, exited with (-?\d+)")  # DVC's report of the stage command's exit


class StageFailed(RuntimeError):
    """`dvc repro` of a stage exited non-zero; the message ends with the stage's stderr tail."""


class StageUserError(StageFailed):
    """The stage itself exited with USER_ERROR_EXIT: a mistake in params or data, not worth a retry."""


def stage_exit_code(stderr: list[str]) -> Optional[int]:
    """The stage command's own exit code, as DVC reports it on stderr (None when DVC failed before running it)."""
    codes = [int(m.group(1)) for line in stderr for m in [_STAGE_EXIT.search(line)] if m]
    return codes[-1] if codes else None


def retry_unless_user_error(task_: Task, task_run, state) -> bool:
    """Prefect's retry_condition_fn: retry anything but a StageUserError, and nothing once the run is stopped."""
    return not isinstance(state.data, StageUserError) and stop_reason() is None


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

    before = snapshot(Path(workdir), stage)
    started = time.time()
    out = run_streaming(args, Path(workdir), log_line, {"GANAUG_THREADS": str(threads)} if threads else None)
    finished = time.time()
    if out.returncode != 0 and stop_reason() is not None:
        raise StageFailed(f"stage '{stage}' stopped: {stop_reason()}")
    if out.returncode != 0:
        tail = "\n".join(out.stderr_tail[-STDERR_TAIL_IN_ERROR:]) or "(no stderr)"
        if stage_exit_code(out.stderr_tail) == USER_ERROR_EXIT:
            errors = [line for line in out.stderr_tail if line.startswith("error: ")]
            logger.error("stage %s: %s (a user error: not retried)", stage, errors[-1] if errors else tail)
            raise StageUserError(f"stage '{stage}' refused its input, not retried: "
                                 f"{errors[-1] if errors else tail}")
        logger.error("stage %s failed (dvc exit %d); last stderr lines:\n%s", stage, out.returncode, tail)
        raise StageFailed(f"stage '{stage}' failed (dvc exit {out.returncode}); last stderr lines:\n{tail}")
    status, detail = classify(before, snapshot(Path(workdir), stage), out.stdout)
    result = StageResult(stage=stage, status=status, detail=detail, seconds=round(finished - started, 3),
                         started=started, finished=finished)
    logger.info("stage %s: %s in %.1f s", stage, result.outcome(), result.seconds)
    return result


def stage_task(params: AugmentParams) -> Task:
    """`run_stage` with this run's retry policy: `retries` tries, delays doubling from `retry_delay_seconds`,
    none after a user error; each try bounded by `stage_timeout_seconds`."""
    delays = exponential_backoff(params.retry_delay_seconds)(params.retries) if params.retries else 0
    return run_stage.with_options(retries=params.retries, retry_delay_seconds=delays,
                                  retry_condition_fn=retry_unless_user_error,
                                  timeout_seconds=params.stage_timeout_seconds)


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
    return thread_share(width)


def open_workspace(project: Path, params: AugmentParams,
                   log: Callable[[str], None]) -> AbstractContextManager[Workspace]:
    if params.is_experiment:
        return experiment_workspace(project, params.overrides, log)
    return project_workspace(project, log, show_waiting)


WAITING_STATE = "AwaitingWorkspaceLock"


def show_waiting(why: Optional[str]) -> None:
    """While this flow run waits for the workspace lock, its state is named `AwaitingWorkspaceLock` (with `why`
    as the message), then `Running` again. The type stays RUNNING: Prefect refuses to move a running flow run
    back to a waiting type, but the UI and `prefect flow-run ls` show the name."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.states import Running

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return
    state = Running(name=WAITING_STATE, message=why) if why else Running()
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(ctx.flow_run.id, state)  # not forced: a cancelling run stays cancelling


@contextmanager
def run_deadline(seconds: Optional[float]) -> Iterator[None]:
    """After `seconds`, stop the run: kill the running stages' processes and start no further stage."""
    if seconds is None:
        yield
        return
    STOPPED.clear()
    timer = threading.Timer(seconds, stop_all, args=(f"the run passed its run_timeout_seconds={seconds:g}",))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        STOPPED.clear()


def run_name(repo: str, overrides: dict[str, Any], experiment_name: Optional[str]) -> str:
    """A flow-run name that says what ran: the project, the overrides (or none), the experiment name."""
    name = f"{Path(repo).resolve().name}: {format_overrides(overrides) if overrides else 'params.yaml as committed'}"
    name += f" -> {experiment_name}" if experiment_name else ""
    return name if len(name) <= 120 else name[:119] + "…"


def _augment_run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters.get("params") or {}
    p = p.model_dump() if isinstance(p, AugmentParams) else dict(p)
    return run_name(p.get("repo", "."), p.get("overrides") or {}, p.get("experiment_name"))


def run_pipeline(params: AugmentParams) -> RunSummary:
    """The body of the flows: run (or skip, as DVC decides) every stage of the project's dvc.yaml in its
    workspace, save the experiment if it is one, publish the report artifacts."""
    logger = get_run_logger()
    terminate_children_on_sigterm()  # a cancelled or killed run takes its DVC and stage processes with it
    project = find_project(params.repo)
    if params.experiment_name and experiment_exists(project, params.experiment_name):
        raise WorkspaceError(f"experiment_name {params.experiment_name!r}: {project} already has one so named")
    logger.info("overrides: %s", format_overrides(params.overrides))
    with open_workspace(project, params, logger.info) as ws, run_deadline(params.run_timeout_seconds):
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


@flow(name="augment", flow_run_name=_augment_run_name,
      description="ganaug: the DVC stages of dvc.yaml in DAG order, one task per stage.")
def augment(params: AugmentParams = AugmentParams()) -> RunSummary:
    """Run (or skip, as DVC decides) every stage of the project's dvc.yaml; publish the report artifacts."""
    return run_pipeline(params)


def dask_task_runner(address: Optional[str] = None, threads: int = 4):
    """A Dask task runner: the cluster at `address`, else a local in-process cluster with `threads` threads.

    Stage work happens in DVC subprocesses, so threads are enough locally; a
    remote cluster's workers must see the project at the same path.
    """
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": 1, "threads_per_worker": threads, "processes": False})
