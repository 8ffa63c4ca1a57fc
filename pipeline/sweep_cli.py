"""`ganaug sweep`: the command line of `pipeline/sweep.py`.

    ganaug sweep sweep.yaml                                   # the grid of a file
    ganaug sweep --name shots --set data.shots=5,10,20 --seeds 0-4 --datasets mnist04 fashion_rev --jobs 2
    ganaug sweep sweep.yaml --dry-run                         # the cells, and which are done
    ganaug sweep sweep.yaml --executor dask --address tcp://scheduler:8786
    ganaug sweep sweep.yaml --executor prefect                # flow runs of ganaug-sweep-cell/sweep

Exit codes: 0 every cell has its experiment, 1 a cell failed (after its retry),
2 the grid, an option or `--repo` is wrong (one line, before anything runs).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.overrides import OverrideError, format_overrides, validate_overrides
from pipeline.workspace import find_project, head_experiments

DEPLOYMENT = "ganaug-sweep-cell/sweep"


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("sweep", help="a grid of pipeline runs, each saved as a DVC experiment, with one table at "
                                     "the end; resumes where a sweep stopped")
    s.add_argument("file", nargs="?", type=Path, help="a sweep YAML file (name, datasets, set, seeds)")
    s.add_argument("--name", default=None, help="the sweep's name: its experiments' names start with it "
                                                "(default: the file's stem, else 'sweep')")
    s.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=V1,V2",
                   help="a swept params.yaml key and its values, e.g. --set data.shots=5,10,20 (repeatable; "
                        "a YAML list KEY=[[5, 6], [7]] for values that hold commas or are lists)")
    s.add_argument("--seeds", default=None, metavar="0-4", help="seeds (each sets data.seed and every training seed)")
    s.add_argument("--datasets", nargs="+", default=[], metavar="NAME",
                   help="named data scenarios (pipeline/datasets.py): mnist04 fashion_rev fashion digits mnist_usps")
    s.add_argument("--repo", default=".", help="the ganaug project (default: current directory)")
    s.add_argument("--executor", choices=["local", "dask", "prefect"], default="local",
                   help="where cells run: local processes (default), a Dask cluster (--address), or a Prefect "
                        "deployment on a work pool (--deployment)")
    s.add_argument("-j", "--jobs", type=int, default=1, help="local: cells at once (default 1)")
    s.add_argument("--threads", type=int, default=None,
                   help="torch threads per stage of a cell (default: local, the cores / jobs; elsewhere, the "
                        "worker's GANAUG_THREADS or all its cores)")
    s.add_argument("--address", default=None, help="dask: the scheduler, e.g. tcp://10.0.0.5:8786")
    s.add_argument("--deployment", default=DEPLOYMENT, help=f"prefect: the deployment (default {DEPLOYMENT})")
    s.add_argument("--git-remote", default=None, metavar="REMOTE",
                   help="workers without this folder: each cell clones the git remote REMOTE, pushes its "
                        "experiment there (dvc exp push), and the sweep pulls it")
    s.add_argument("--retries", type=int, default=1, help="tries more for a failed cell (default 1)")
    s.add_argument("--dry-run", action="store_true", help="list the cells and which are done; run nothing")
    s.add_argument("--out", type=Path, default=None, help="also write the table (markdown) to this file")
    s.add_argument("--raw", type=Path, default=None, help="write every cell's raw per-seed metrics (JSON) here")


def build_grid(args: argparse.Namespace):
    from pipeline.sweep_grid import grid_from_args, grid_from_file

    base = grid_from_file(args.file) if args.file else None
    return grid_from_args(args.name or (None if base else "sweep"), args.assignments, args.seeds, args.datasets, base)


def make_executor(args: argparse.Namespace, project: Path, n_cells: int):
    from pipeline.sweep_exec import DaskExecutor, LocalExecutor, PrefectExecutor
    from pipeline.dvc_cli import run_git

    git_url = run_git(project, "remote", "get-url", args.git_remote).strip() if args.git_remote else None
    if args.executor == "dask":
        if not args.address:
            raise OverrideError("--executor dask: give the scheduler's --address (e.g. tcp://127.0.0.1:8786)")
        return DaskExecutor(str(project), args.address, args.threads, git_url)
    if args.executor == "prefect":
        return PrefectExecutor(str(project), args.deployment, n_cells, args.threads, git_url)
    if args.jobs < 1:
        raise OverrideError(f"--jobs: expected a positive number of cells at once, got {args.jobs}")
    return LocalExecutor(str(project), args.jobs, args.threads, git_url)


def cmd_sweep(args: argparse.Namespace) -> int:
    from pipeline.sweep import prefect_key, publish_table, raw, run_sweep, table
    from pipeline.sweep_grid import cells

    project = find_project(args.repo)
    grid = build_grid(args)
    todo = cells(grid, project)
    for c in todo[:1] + todo[-1:]:  # every cell has the same keys: the first and last catch a bad key or value
        validate_overrides(project, c.overrides)
    if args.dry_run:
        done = head_experiments(project)
        for c in todo:
            print(f"{c.name}  {'done' if c.name in done else 'to run'}  {format_overrides(c.overrides)}")
        print(f"{len(todo)} cell(s), {sum(c.name in done for c in todo)} done")
        return 0
    if args.retries < 0:
        raise OverrideError(f"--retries: expected 0 or more, got {args.retries}")
    executor = make_executor(args, project, len(todo))
    key = prefect_key(grid.name)
    try:
        outcomes = run_sweep(project, todo, executor, 1 + args.retries, key, args.git_remote)
    finally:
        if hasattr(executor, "close"):
            executor.close()
    text = table(outcomes)
    print("\nΔ macro-F1 against real-only, paired over seeds (mean [95% interval], * excludes 0):\n" + text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.raw:
        args.raw.write_text(json.dumps(raw(outcomes), indent=1) + "\n")
    publish_table(key, text)
    failed = [o for o in outcomes if o.status == "failed"]
    for o in failed:
        print(f"error: cell {o.cell.name} failed: {o.error.splitlines()[0] if o.error else ''}", file=sys.stderr)
    return 1 if failed else 0


