"""Where a sweep's cells run: local processes, a Dask cluster, or a Prefect deployment on a work pool.

Every executor runs one cell per call to `run(spec)`, blocking until it ends,
and raises CellFailed when it failed; the sweep calls it from `slots` threads at
once. All three end in the same `pipeline/sweep_cell.py` process on the machine
that runs the cell, so a cell's results do not depend on where it ran, only on
its params, code and thread count.

- `local`: `jobs` cell processes at once on this machine, each stage with
  `threads` torch threads (default: the cores split between the jobs).
- `dask`: each cell is a task on the Dask cluster at `address` (`dask worker`
  processes on any machines); as many in flight as the cluster has worker threads.
- `prefect`: each cell is a flow run of the `ganaug-sweep-cell` deployment
  (`prefect.yaml`), which its work pool's workers pick up; the deployment's
  concurrency limit (and the pool's) decides how many run at once.

Workers on other machines need the project at the same path (a shared
folder), or `git_url`: each cell then runs in a clone and pushes its experiment
back (`dvc exp push`), and the sweep pulls it.
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Optional, Protocol

from ganaug.config.errors import UserError
from pipeline.dvc_cli import command_env, thread_share
from pipeline.sweep_cell import CellFailed

TAIL = 30


class ExecutorError(UserError):
    """The executor cannot start (no scheduler at the address, no such deployment); one line."""


class Executor(Protocol):
    slots: int  # cells handed out at once
    where: str  # for the progress line

    def run(self, spec: dict) -> dict:
        """Run one cell to its end; what `run_cell` returned. CellFailed when it failed."""


def cell_process(repo: str, spec: dict, threads: Optional[int], git_url: Optional[str]) -> dict:
    """`python -m pipeline.sweep_cell` for one cell, in this interpreter's environment; its result."""
    cmd = [sys.executable, "-m", "pipeline.sweep_cell", "--repo", repo, json.dumps(spec)]
    cmd += ["--threads", str(threads)] if threads else []
    cmd += ["--git-url", git_url] if git_url else []
    proc = subprocess.run(cmd, env=command_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-TAIL:])
        raise CellFailed(f"cell {spec['name']}: exit {proc.returncode}\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@dataclass
class LocalExecutor:
    repo: str
    jobs: int = 1
    threads: Optional[int] = None
    git_url: Optional[str] = None

    @property
    def slots(self) -> int:
        return self.jobs

    @property
    def where(self) -> str:
        return f"{self.jobs} local process(es), {self.threads or thread_share(self.jobs)} thread(s) each"

    def run(self, spec: dict) -> dict:
        return cell_process(self.repo, spec, self.threads or thread_share(self.jobs), self.git_url)


class DaskExecutor:
    """Cells as tasks of the Dask cluster at `address`; each task starts the cell's process on its worker."""

    def __init__(self, repo: str, address: str, threads: Optional[int] = None, git_url: Optional[str] = None):
        from distributed import Client

        self.repo, self.address, self.threads, self.git_url = repo, address, threads, git_url
        try:
            self.client = Client(address, timeout="30s")
        except OSError as exc:
            raise ExecutorError(f"--address {address}: no Dask scheduler answers there ({exc})") from None
        self.slots = max(1, sum(self.client.nthreads().values()))

    @property
    def where(self) -> str:
        return f"Dask at {self.address} ({self.slots} worker thread(s))"

    def run(self, spec: dict) -> dict:
        future = self.client.submit(cell_process, self.repo, spec, self.threads, self.git_url, pure=False,
                                    key=f"ganaug-cell-{spec['name']}-{id(spec)}")
        return future.result()

    def close(self) -> None:
        self.client.close()


@dataclass
class PrefectExecutor:
    """Cells as flow runs of a deployment (default `ganaug-sweep-cell/sweep`), run by its work pool's workers."""
    repo: str
    deployment: str
    n_cells: int
    threads: Optional[int] = None
    git_url: Optional[str] = None
    poll_seconds: float = 2.0  # how often each cell's flow run is asked for its state

    def __post_init__(self) -> None:
        """ExecutorError unless the Prefect API answers and has the deployment."""
        import os

        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        api = os.environ.get("PREFECT_API_URL", "(PREFECT_API_URL not set)")
        try:
            with get_client(sync_client=True) as client:
                client.read_deployment_by_name(self.deployment)
        except ObjectNotFound:
            raise ExecutorError(f"--deployment {self.deployment}: no such deployment on the Prefect API at {api}; "
                                "deploy it with `prefect --no-prompt deploy --name sweep`") from None
        except Exception as exc:  # httpx's connection errors, a server that is starting
            raise ExecutorError(f"--executor prefect: the Prefect API at {api} does not answer "
                                f"({exc.__class__.__name__}); start one and set PREFECT_API_URL") from None

    @property
    def slots(self) -> int:
        return max(1, self.n_cells)  # all submitted at once: the deployment's and the pool's limits queue them

    @property
    def where(self) -> str:
        return f"Prefect deployment {self.deployment}"

    def run(self, spec: dict) -> dict:
        from prefect.deployments import run_deployment

        flow_run = run_deployment(self.deployment, as_subflow=False, timeout=None, poll_interval=self.poll_seconds, parameters={
            "cell": spec, "repo": self.repo, "threads": self.threads, "git_url": self.git_url})
        if not flow_run.state.is_completed():
            raise CellFailed(f"cell {spec['name']}: flow run {flow_run.name} ended {flow_run.state.name}: "
                             f"{flow_run.state.message or ''}".strip())
        return {"name": spec["name"], "status": "ran", "flow_run": flow_run.name}  # its results: the experiment
