"""`ganaug run` (one flow run now), `ganaug serve` (the nightly and the manual deployment), `ganaug queue`
(DVC's experiment queue with each experiment's stages given their share of the cores);
`ganaug sweep` (a grid of experiments: `pipeline/sweep_cli.py`); `ganaug sample` and `ganaug evaluate` (`ganaug/tools/artifact_cli.py`) use a trained GAN or classifier directly.

Exit codes of `ganaug run`: 0 the flow run completed, 1 it failed (a stage
failed after its retries), 2 the command line, an override or `--repo` is
wrong (reported in one line naming the key, before anything runs).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from typing import Any, Optional, Sequence

from pydantic import ValidationError

from ganaug.config.errors import UserError
from pipeline.overrides import OverrideError, format_overrides, parse_assignment
from pipeline.run_params import AugmentParams
from pipeline.workspace import WorkspaceError, find_project

SHORTCUTS = {"shots": "data.shots"}  # --shots 5 is --set data.shots=5
STARTUP_TIMEOUT = 120  # seconds for the temporary Prefect server; Prefect's own 20 s is too short on a busy machine
SERVER_DID_NOT_START = "Timed out while attempting to connect to ephemeral Prefect API server"


def prefect_environment(startup_timeout: Optional[int]) -> Optional[tempfile.TemporaryDirectory]:
    """Settings for Prefect, made before it is imported.

    Its server's usage analytics are off: offline they only log a false ERROR every run. Without
    PREFECT_API_URL the run gets a temporary server of its own with a database of its own (a temporary
    folder, returned to be cleaned up), so two runs never share an SQLite file, and a longer start-up wait.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if os.environ.get("PREFECT_API_URL"):
        return None
    wait = startup_timeout if startup_timeout is not None else int(os.environ.get("GANAUG_PREFECT_STARTUP_TIMEOUT",
                                                                                   STARTUP_TIMEOUT))
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = str(wait)
    home = tempfile.TemporaryDirectory(prefix="ganaug-prefect-")
    os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{home.name}/prefect.db"
    return home


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ganaug", description="Run the ganaug DVC pipeline as a Prefect flow.")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipeline once, now (stages DVC finds up to date are skipped)")
    _add_run_options(run)
    run.add_argument("--exp-name", metavar="NAME", help="save the run as the DVC experiment NAME (implies an experiment run)")
    run.add_argument("--parallel", action="store_true",
                     help="run independent stages (e.g. the finetune variants) at the same time")
    run.add_argument("--dask", nargs="?", const="local", metavar="ADDRESS",
                     help="run stage tasks on Dask: a local cluster, or the scheduler at ADDRESS; implies --parallel")

    serve = sub.add_parser("serve", help="serve the nightly (cron) and the manual deployment; blocks")
    _add_run_options(serve)
    serve.add_argument("--cron", default=None, help="nightly schedule (default: '0 2 * * *')")
    serve.add_argument("--timezone", default=None, help="timezone of the schedule (default: UTC)")

    queue = sub.add_parser("queue", help="start DVC's experiment queue (`dvc queue start -j N`), each experiment's "
                                         "stages given their share of the cores (GANAUG_THREADS = cores / N)")
    queue.add_argument("-j", "--jobs", type=int, default=1, metavar="N", help="experiments at once (default 1)")
    queue.add_argument("--repo", default=".", help="the ganaug project (default: current directory)")

    from pipeline.sweep_cli import add_parser as add_sweep_parser  # `sweep`: a grid of experiments
    add_sweep_parser(sub)

    from ganaug.tools.artifact_cli import add_parsers  # `sample`, `evaluate`: the same core code as the stages
    add_parsers(sub)
    return ap


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", default=".", help="the ganaug project (default: current directory)")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help="override a params.yaml value for this run, e.g. --set gan.steps=500 (repeatable); "
                        "a run with overrides is saved as a DVC experiment, params.yaml is left alone")
    p.add_argument("--shots", type=int, metavar="N", help="shorthand for --set data.shots=N")
    p.add_argument("--retries", type=int, default=2, metavar="N", help="retries of a failing stage (default 2)")
    p.add_argument("--retry-delay", type=float, default=10.0, metavar="SECONDS",
                   help="seconds before the first retry, doubling after (default 10)")
    p.add_argument("--stage-timeout", type=float, default=None, metavar="SECONDS",
                   help="stop a stage try, with its processes, after this long (default: no limit)")
    p.add_argument("--run-timeout", type=float, default=None, metavar="SECONDS",
                   help="stop the whole run, with its processes, after this long (default: no limit)")
    p.add_argument("--startup-timeout", type=int, default=None, metavar="SECONDS",
                   help=f"without PREFECT_API_URL: how long to wait for the temporary Prefect server "
                        f"(default {STARTUP_TIMEOUT}, or GANAUG_PREFECT_STARTUP_TIMEOUT)")


def collect_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """--set KEY=VALUE and the shortcuts, in the order given (later wins)."""
    overrides = dict(parse_assignment(a) for a in args.assignments)
    for option, key in SHORTCUTS.items():
        value = getattr(args, option, None)
        if value is not None:
            overrides[key] = value
    return overrides


def flow_params(args: argparse.Namespace) -> AugmentParams:
    """The validated flow parameters; OverrideError/WorkspaceError with one readable line."""
    project = find_project(args.repo)
    try:
        return AugmentParams(repo=str(project), overrides=collect_overrides(args),
                             experiment_name=getattr(args, "exp_name", None), retries=args.retries,
                             retry_delay_seconds=args.retry_delay, stage_timeout_seconds=args.stage_timeout,
                             run_timeout_seconds=args.run_timeout,
                             parallel=bool(getattr(args, "parallel", False) or getattr(args, "dask", None)))
    except ValidationError as exc:
        raise OverrideError(one_line(exc)) from None


def one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        msg = str(err["msg"]).removeprefix("Value error, ")
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(msg if not loc or msg.startswith(loc) else f"{loc}: {msg}")
    return "; ".join(parts)


def cmd_run(args: argparse.Namespace) -> int:
    params = flow_params(args)
    home = prefect_environment(args.startup_timeout)
    try:
        return _run_flow(args, params)
    except RuntimeError as exc:
        if SERVER_DID_NOT_START not in str(exc):
            raise
        wait = os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]
        print(f"error: the temporary Prefect server did not start within {wait} s (a busy machine?); "
              "wait longer with --startup-timeout SECONDS, or start one (`prefect server start`) and set "
              "PREFECT_API_URL", file=sys.stderr)
        return 1
    finally:
        if home is not None:
            home.cleanup()


def _run_flow(args: argparse.Namespace, params: AugmentParams) -> int:
    from pipeline.flow import augment, dask_task_runner

    flow_ = augment
    if args.dask:
        flow_ = augment.with_options(task_runner=dask_task_runner(None if args.dask == "local" else args.dask))
    state = flow_(params, return_state=True)
    if not state.is_completed():
        print(f"error: flow run {state.name}: {state.message}", file=sys.stderr)
        return 1
    summary = state.result()
    print(f"\nganaug run on {summary.project}  overrides: {format_overrides(summary.overrides)}")
    width = max(len(r.stage) for r in summary.stages)
    for r in summary.stages:
        print(f"  {r.stage:<{width}}  {r.status:<8} {r.seconds:7.1f} s  {'' if r.status == 'ran' else r.detail}".rstrip())
    print(f"  {len(summary.ran)} ran, {len(summary.skipped)} skipped, {summary.seconds:.1f} s in all")
    if summary.experiment:
        print(f"  saved as DVC experiment {summary.experiment!r} (dvc exp show; dvc exp apply {summary.experiment})")
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    """`dvc queue start -j N` with GANAUG_THREADS set for the workers, which pass it to every stage they run.

    A GANAUG_THREADS already set is kept. The share depends only on N and the cores, never on what else is
    running, so an experiment's results do not depend on the load (they do depend on the thread count).
    """
    from pipeline.dvc_cli import command_env, dvc_args, thread_share

    if args.jobs < 1:
        raise OverrideError(f"--jobs: expected a positive number of experiments at once, got {args.jobs}")
    project = find_project(args.repo)
    threads = os.environ.get("GANAUG_THREADS") or str(thread_share(args.jobs))
    proc = subprocess.run(dvc_args("queue", "start", "-j", str(args.jobs), wait_for_lock=False), cwd=project,
                          env=command_env({"GANAUG_THREADS": threads}))
    if proc.returncode == 0:
        print(f"ganaug queue: {args.jobs} worker(s), GANAUG_THREADS={threads} for each experiment's stages "
              f"({os.cpu_count()} cores); follow with `dvc queue status`, results in `dvc exp show`")
    return proc.returncode


def cmd_serve(args: argparse.Namespace) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from pipeline.deploy import DEFAULT_CRON, DEFAULT_TIMEZONE, MANUAL, NIGHTLY, serve_deployments

    params = flow_params(args)
    cron, tz = args.cron or DEFAULT_CRON, args.timezone or DEFAULT_TIMEZONE
    print(f"serving augment/{NIGHTLY} ({cron}, {tz}) and augment/{MANUAL} for {params.repo}; Ctrl-C stops")
    serve_deployments(params, cron, tz)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("sample", "evaluate"):
        from ganaug.tools.artifact_cli import run as run_artifact_command
        return run_artifact_command(args)
    try:
        from pipeline.sweep_cli import cmd_sweep

        commands = {"run": cmd_run, "serve": cmd_serve, "queue": cmd_queue, "sweep": cmd_sweep}
        return commands[args.command](args)
    except (UserError, WorkspaceError) as exc:  # OverrideError, a missing dataset of a sweep: one line
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
