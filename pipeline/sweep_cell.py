"""One sweep cell, wherever it runs: the pipeline in an experiment workspace, saved as a named DVC experiment.

`run_cell` is what every executor runs (a local process, a Dask worker, a
Prefect flow run on a work pool). It

1. finds the project: the folder `repo`, or with `git_url` a clone of it made
   for the cell (the cell then pushes its experiment back: `dvc exp push`);
2. does nothing when the project's experiment store already holds the cell's
   experiment on the current commit (a resumed sweep; the store decides, not a list kept aside);
3. else runs `dvc repro` in a git worktree of HEAD with the cell's overrides
   (`pipeline/workspace.py`: the project's DVC cache, so unchanged stages come
   back from DVC's run cache), with `threads` torch threads per stage;
4. writes `sweep_cell.json` (the cell, its stage times, the machine) and saves the
   worktree as the experiment, that file and the metrics included.

A failed `dvc repro` raises CellFailed with the tail of its output.

    python -m pipeline.sweep_cell --repo . --threads 1 '{"name": ..., "overrides": {...}}'
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from pipeline.dvc_cli import dvc_args, run_dvc, run_git, run_streaming, terminate_children_on_sigterm
from pipeline.workspace import experiment_workspace, find_project, head_experiments, save_experiment

RECORD = "sweep_cell.json"  # in the experiment: the cell's name, overrides, stage seconds, machine
STAGE_START = re.compile(r"^Running stage '([^']+)'")  # `dvc repro` output: a stage starts ...
STAGE_DONE = re.compile(r"^(Updating|Generating) lock file")  # ... and ends
TAIL = 40


class CellFailed(RuntimeError):
    """The cell's `dvc repro` (or its experiment's save or push) failed; the message ends with the output's tail."""


def repro(root: Path, threads: Optional[int], pull: bool = False) -> dict[str, float]:
    """`dvc repro` (with `pull`: `--pull`, missing outputs and run-cache entries from the DVC remote) in `root`;
    wall seconds of each stage that ran (its start line to its lock-file line)."""
    seconds: dict[str, float] = {}
    current: list = [None, 0.0]
    tail: list[str] = []

    def on_line(stream: str, line: str) -> None:
        now = time.monotonic()
        tail.append(line)
        del tail[:-TAIL]
        if m := STAGE_START.match(line):
            current[:] = [m.group(1), now]
        elif current[0] and STAGE_DONE.match(line):
            seconds[current[0]] = round(now - current[1], 2)
            current[0] = None

    env = {"GANAUG_THREADS": str(threads)} if threads else None
    result = run_streaming(dvc_args("repro", *(["--pull"] if pull else [])), root, on_line, env=env)
    if result.returncode != 0:
        raise CellFailed(f"dvc repro failed in the cell's workspace (exit {result.returncode}):\n" + "\n".join(tail))
    return seconds


def clone(git_url: str, into: Path) -> Path:
    """A clone of the project at `git_url` whose DVC remote is the project's (`dvc repro --pull` fills its cache)."""
    run_git(into.parent, "clone", "--quiet", git_url, str(into))
    return into


def run_cell(repo: str, spec: dict, threads: Optional[int] = None, git_url: Optional[str] = None) -> dict:
    """Run the cell `spec` ({name, overrides}) unless its experiment exists; what happened, as a dict."""
    name, overrides = spec["name"], dict(spec["overrides"])
    tmp = Path(tempfile.mkdtemp(prefix="ganaug-cell-")) if git_url else None
    try:
        project = clone(git_url, tmp / "project") if git_url else find_project(repo)
        if git_url:
            run_git(project, "fetch", "--quiet", "origin", "+refs/exps/*:refs/exps/*")
        if name in head_experiments(project):  # on the current commit, as the sweep counts done cells
            return {"name": name, "status": "done before"}
        started = time.monotonic()
        with experiment_workspace(project, overrides, lambda msg: None) as ws:
            stages = repro(ws.root, threads, pull=bool(git_url))
            record = {"name": name, "overrides": overrides, "stage_seconds": stages,
                      "seconds": round(time.monotonic() - started, 2), "host": socket.gethostname(),
                      "machine": f"{platform.machine()} Python {platform.python_version()}", "threads": threads}
            (ws.root / RECORD).write_text(json.dumps(record, indent=1) + "\n")
            save_experiment(ws, name, lambda msg: None)
        if git_url:
            run_dvc(project, "exp", "push", "origin", name)
        return {"status": "ran", **record}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Run one ganaug sweep cell (what `ganaug sweep` starts).")
    ap.add_argument("spec", help='the cell as JSON: {"name": ..., "overrides": {...}}')
    ap.add_argument("--repo", default=".")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--git-url", default=None)
    a = ap.parse_args(argv)
    terminate_children_on_sigterm()  # a killed cell takes its `dvc repro` and stage with it
    try:
        out = run_cell(a.repo, json.loads(a.spec), a.threads, a.git_url)
    except CellFailed as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
