"""`ganaug sweep`: a grid of pipeline runs, each a DVC experiment, run where the compute is; one table at the end.

1. The grid (`pipeline/sweep_grid.py`) gives the cells: name and overrides.
2. Cells whose experiment is already in the project's experiment store (on the
   current commit) are done: a sweep that crashed or was cancelled resumes with
   the others. `--dry-run` lists the cells and which are done.
3. The rest go to the executor (`pipeline/sweep_exec.py`: local processes, a
   Dask cluster, a Prefect work pool), `slots` at a time; a failed cell is tried
   once more, then reported. Progress (done, running, failed, ETA) is a tqdm line
   and, when a Prefect API is set, a progress artifact.
4. Cells run elsewhere with `git_url` pushed their experiments; they are pulled.
5. Every cell's `metrics/eval.json` is read from its experiment, and the table
   (`pipeline/stats.py`: per cell without its seed and per variant, Δ macro-F1
   against real-only with the paired 95% t-interval over the seeds) is printed,
   written with `--out`, and published as a Prefect artifact when an API is set.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from pipeline.dvc_cli import CommandError, run_dvc, run_git
from pipeline.stats import fmt_delta, markdown_table, mean_ci
from pipeline.sweep_cell import RECORD, CellFailed
from pipeline.sweep_exec import Executor
from pipeline.sweep_grid import Cell
from pipeline.workspace import head_experiments

BASELINE = "baseline"


@dataclass
class Outcome:
    cell: Cell
    status: str  # done before | ran | failed
    tries: int = 0
    error: str = ""
    metrics: dict = field(default_factory=dict)  # metrics/eval.json of its experiment
    record: dict = field(default_factory=dict)  # sweep_cell.json of its experiment


def read_from_experiment(project: Path, ref: str, path: str) -> dict:
    try:
        return json.loads(run_git(project, "show", f"{ref}:{path}"))
    except (CommandError, ValueError):
        return {}


# ---------------------------------------------------------------- progress

class Progress:
    """Done, running and failed cells and the ETA: a tqdm line (quiet off a terminal) and a Prefect artifact."""

    def __init__(self, total: int, done: int, where: str, key: Optional[str]):
        from tqdm import tqdm

        self.total, self.key, self.done, self.failed, self.running = total, key, done, 0, 0
        self.bar = tqdm(total=total, initial=done, desc=f"sweep on {where}", unit="cell",
                        disable=None, dynamic_ncols=True)
        self.artifact = None
        if key:
            from prefect.artifacts import create_progress_artifact

            self.artifact = _quietly(create_progress_artifact, 100.0 * done / max(total, 1), key=key,
                                     description=f"ganaug sweep: cells done of {total}")

    def update(self, finished: int = 0, running: Optional[int] = None, failed: int = 0) -> None:
        self.running = self.running if running is None else running
        self.failed += failed
        self.done += finished
        self.bar.set_postfix_str(f"running {self.running}, failed {self.failed}", refresh=False)
        self.bar.update(finished)  # tqdm is quiet off a terminal: `self.done` counts for the artifact
        if self.artifact is not None and finished:
            from prefect.artifacts import update_progress_artifact

            _quietly(update_progress_artifact, self.artifact, 100.0 * self.done / max(self.total, 1))

    def close(self) -> None:
        self.bar.close()


def _quietly(fn, *args, **kwargs):
    """A Prefect artifact call; a Prefect API that does not answer costs a warning, never the sweep."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        print(f"warning: Prefect artifact not written ({exc.__class__.__name__}: {exc})", file=sys.stderr)
        return None


def prefect_key(name: str) -> Optional[str]:
    """A Prefect artifact key for the sweep, or None when no Prefect API is set (PREFECT_API_URL)."""
    if not os.environ.get("PREFECT_API_URL"):
        return None
    return "ganaug-sweep-" + re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")


# ---------------------------------------------------------------- running

def attempt(executor: Executor, cell: Cell, tries: int) -> Outcome:
    """Run `cell` up to `tries` times; its Outcome (failed with the last error)."""
    error = ""
    for k in range(1, tries + 1):
        try:
            result = executor.run(cell.spec())
            return Outcome(cell, "done before" if result.get("status") == "done before" else "ran", k)
        except CellFailed as exc:
            error = str(exc)
        except Exception as exc:  # a lost worker, a crashed flow run: reported with the cell, the sweep goes on
            error = f"{exc.__class__.__name__}: {exc}"
    return Outcome(cell, "failed", tries, error)


def run_cells(executor: Executor, todo: Sequence[Cell], progress: Progress, tries: int = 2,
              on_outcome: Callable[[Outcome], None] = lambda o: None) -> list[Outcome]:
    """Every cell of `todo` through the executor, `executor.slots` at a time; their outcomes in `todo`'s order."""
    outcomes: dict[str, Outcome] = {}
    pending = list(todo)
    with ThreadPoolExecutor(max_workers=max(1, min(executor.slots, len(todo) or 1))) as pool:
        running: dict[Future, Cell] = {}
        while pending or running:
            while pending and len(running) < executor.slots:
                cell = pending.pop(0)
                running[pool.submit(attempt, executor, cell, tries)] = cell
            progress.update(running=len(running))
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                out = fut.result()
                del running[fut]
                outcomes[out.cell.name] = out
                on_outcome(out)
                progress.update(finished=1, running=len(running), failed=int(out.status == "failed"))
    return [outcomes[c.name] for c in todo]


def pull(project: Path, remote: str, names: Sequence[str]) -> None:
    """`dvc exp pull` the experiments cells run elsewhere pushed (their git refs and cached outputs)."""
    if names:
        run_dvc(project, "exp", "pull", remote, *names)


def run_sweep(project: Path, all_cells: Sequence[Cell], executor: Executor, tries: int = 2,
              key: Optional[str] = None, remote: Optional[str] = None,
              log: Callable[[str], None] = print) -> list[Outcome]:
    """Run the grid's unfinished cells; every cell's outcome with its metrics read from the experiment store."""
    refs = head_experiments(project)
    todo = [c for c in all_cells if c.name not in refs]
    log(f"sweep: {len(all_cells)} cell(s), {len(all_cells) - len(todo)} done before, {len(todo)} to run "
        f"on {executor.where}")
    progress = Progress(len(all_cells), len(all_cells) - len(todo), executor.where, key)
    started = time.monotonic()
    try:
        ran = run_cells(executor, todo, progress, tries,
                        lambda o: log(f"  {o.cell.name}: {o.status}" + (f" after {o.tries} tries: {o.error}"
                                                                        if o.status == "failed" else "")))
    finally:
        progress.close()
    if remote:
        pull(project, remote, [o.cell.name for o in ran if o.status == "ran"])
    refs = head_experiments(project)
    by_name = {o.cell.name: o for o in ran}
    outcomes = []
    for c in all_cells:
        out = by_name.get(c.name) or Outcome(c, "done before")
        if c.name in refs:
            out.metrics = read_from_experiment(project, refs[c.name], "metrics/eval.json")
            out.record = read_from_experiment(project, refs[c.name], RECORD)
        elif out.status != "failed":
            out.status, out.error = "failed", "no experiment of that name was saved"
        outcomes.append(out)
    log(f"sweep: {sum(o.status == 'ran' for o in outcomes)} ran, {sum(o.status == 'failed' for o in outcomes)} "
        f"failed, in {time.monotonic() - started:.0f} s")
    return outcomes


# ---------------------------------------------------------------- the table

def variants(outcomes: Sequence[Outcome]) -> list[str]:
    names: list[str] = []
    for o in outcomes:
        names += [k for k, v in o.metrics.items() if isinstance(v, dict) and "macro_f1" in v and k not in names]
    return names


def table(outcomes: Sequence[Outcome], metric: str = "macro_f1") -> str:
    """Per cell without its seed (rows) and variant (columns): Δ `metric` against real-only over the paired
    seeds, mean [95% interval] (* when it excludes 0); real-only's own mean in the first column."""
    cols = [v for v in variants(outcomes) if v != BASELINE]
    groups: dict[str, list[Outcome]] = {}
    for o in outcomes:
        if o.metrics:
            groups.setdefault(o.cell.group, []).append(o)
    rows = []
    for group, outs in groups.items():
        base = [o.metrics[BASELINE][metric] for o in outs]
        row = [group, f"{len(outs)}", f"{sum(base) / len(base):.3f}"]
        for v in cols:
            deltas = [o.metrics[v][metric] - o.metrics[BASELINE][metric] for o in outs if v in o.metrics]
            m, h = mean_ci(deltas)
            row.append(fmt_delta(m, m - h, m + h) if h is not None else f"{m:+.3f}")
        rows.append(row)
    return markdown_table(["cell", "seeds", f"real-only {metric}"] + [f"Δ {v}" for v in cols], rows)


def raw(outcomes: Sequence[Outcome]) -> dict:
    """Every cell's raw per-seed numbers, as the sweep read them from the experiments (for intervals later)."""
    return {"cells": [{"name": o.cell.name, "group": o.cell.group, "seed": o.cell.seed, "axes": o.cell.axes,
                       "overrides": o.cell.overrides, "status": o.status, "error": o.error,
                       "metrics": o.metrics, "record": o.record} for o in outcomes]}


def publish_table(key: Optional[str], text: str) -> None:
    if key:
        from prefect.artifacts import create_markdown_artifact

        _quietly(create_markdown_artifact, text, key=f"{key}-table", description="ganaug sweep: Δ macro-F1 against real-only")
