"""Shared fixtures: tiny params, a throw-away git + DVC copy of the project, and one shared tiny `dvc repro`."""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
import torch

# One copy of the project-in-a-temp-repo helpers, shared with the benchmarks.
from bench.common import ROOT, PROJECT_FILES, deep_update, make_project, tool_env  # noqa: F401 (re-exported to tests)
import forkserver

# Three pytest-xdist workers on two cores (`make test`): one torch thread each, in-process and in every stage
# subprocess (GANAUG_THREADS, read by ganaug/train/runtime.py configure_threads; inherited through tool_env()),
# so that the workers don't oversubscribe the cores.
os.environ.setdefault("GANAUG_THREADS", "1")
# Prefect servers started by the tests (prefect_test_harness) send no usage analytics: offline that only
# logs a false ERROR, and its writes compete for the test server's SQLite database.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect's own intervals, shortened for the test servers, workers and runners (the same code, sooner): a
# worker or `serve` runner looks for scheduled runs every second instead of every 10, and a deployment run
# that waited for its concurrency slot is retried after 1 s instead of 30.
os.environ.setdefault("PREFECT_WORKER_QUERY_SECONDS", "1")
os.environ.setdefault("PREFECT_WORKER_PREFETCH_SECONDS", "1")
os.environ.setdefault("PREFECT_RUNNER_POLL_FREQUENCY", "1")
os.environ.setdefault("PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS", "1")
torch.set_num_threads(int(os.environ["GANAUG_THREADS"]))
# A suite started in the background by a non-interactive shell (`make test &`, `nohup ...`) inherits SIGINT
# ignored, and so would every process it starts. A Prefect worker stops on SIGTERM by sending itself SIGINT:
# with SIGINT ignored it never stops (tests/test_prefect_production.py waited out its two-minute kill timeout).
# Python's own handler here means default SIGINT in every child.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Small enough for a full `dvc repro` in well under a minute on 2 cores.
TINY_PARAMS = {
    "data": {"shots": 3, "image_size": 16},
    "classifier": {"width": 8, "steps": 30, "batch_size": 32},
    "gan": {"z_dim": 16, "g_width": 16, "d_width": 16, "steps": 20, "batch_size": 16, "checkpoint_every": 10, "ema_start": 5},
    "synth": {"per_class": 4},
    # checkpoint_every < steps: checkpoints are written, then removed when training ends (tests/test_reproducible.py)
    "finetune": {"steps": 15, "batch_size": 16, "checkpoint_every": 5},
    "restore": {"width": 8, "steps": 12, "adapt_steps": 4, "batch_size": 16, "checkpoint_every": 5},
}

DVC = [sys.executable, "-m", "dvc"]


def plain_pipeline_env() -> dict:
    """The environment of a full-pipeline run on a tiny project in plain Python processes: CPU whatever the
    machine has, GANAUG_THREADS as set above."""
    return {**tool_env(), "GANAUG_DEVICE": "cpu"}


_forked: dict[str, str] = {}


def pipeline_env() -> dict:
    """`plain_pipeline_env()` with each `python -m stages.*` forked from a server that has imported torch
    (tests/forkserver.py): a tiny `dvc repro` in about a third of the time. Started once per test process.
    tests/test_reproducible.py checks that it gives the plain processes' outputs, byte for byte."""
    env = plain_pipeline_env()
    if not _forked:
        _forked.update(forkserver.start(env))
    return {**env, **_forked}


def forked_python() -> str:
    """The fork server's client as an interpreter (`pipeline_env()` started): a Python whose stage processes,
    and those of the Python processes it starts, are forked. For bench/uplift.py's pipelines."""
    return forkserver.client_python(pipeline_env())


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 600,
        env: Optional[dict] = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env or tool_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def ran_stages(dvc_output: str) -> set[str]:
    """The stages a `dvc repro` or `dvc exp run` ran, from its stdout."""
    return set(re.findall(r"Running stage '([^']+)'", dvc_output))


@pytest.fixture
def in_tmp_cwd(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- one full tiny `dvc repro`, shared by every test of the session ---------------------------------

@dataclass(frozen=True)
class TinyRepro:
    project: Path  # read-only: tests copy it (`tiny_repro_copy`) to change anything
    stdout: str  # of its `dvc repro`


_WRITE = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


def _tree(root: Path):
    yield root
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            yield Path(dirpath, name)


def _freeze(root: Path) -> dict[str, int]:
    """Make every file and folder under `root` read-only; return their original modes (relative path -> mode)."""
    modes = {}
    for path in _tree(root):
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.lstat().st_mode)
        modes[str(path.relative_to(root))] = mode
        path.chmod(mode & ~_WRITE)
    return modes


def _restore_modes(root: Path, modes: dict[str, int]) -> None:
    for rel, mode in modes.items():  # (chmod needs no write permission on the folder)
        Path(root, rel).chmod(mode)


def _shared_folder(tmp_path_factory, worker_id: str) -> Path:
    """The folder of the shared run: in the parent of the xdist workers' base temp folders (one per session),
    or this session's own base temp folder without xdist."""
    base = tmp_path_factory.getbasetemp()
    folder = (base if worker_id == "master" else base.parent) / "tiny_repro"
    folder.mkdir(exist_ok=True)
    return folder


def _make_shared_run(folder: Path) -> None:
    """The shared run, unless it is made already; the caller holds the folder's lock."""
    project = folder / "project"
    if (folder / "modes.json").exists():
        return
    shutil.rmtree(project, ignore_errors=True)  # a worker that died half-way
    make_project(project, TINY_PARAMS)
    (folder / "repro.stdout").write_text(run(DVC + ["repro"], project, env=pipeline_env()).stdout)
    (folder / "modes.json").write_text(json.dumps(_freeze(project)))  # a test writing into it fails at once


@pytest.fixture(scope="session", autouse=True)
def _start_shared_run(tmp_path_factory, worker_id, request):
    """When a collected test needs the shared run, start it at once, in a thread of whichever worker takes
    the lock first: it runs (on about one core) while the workers go through tests that do not need it. The
    lock is released when it is done."""
    if not any("_tiny_repro_state" in item.fixturenames for item in request.session.items):
        yield
        return
    lock = open(_shared_folder(tmp_path_factory, worker_id) / "lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # the other worker makes it
        lock.close()
        yield
        return

    def make() -> None:
        try:
            _make_shared_run(Path(lock.name).parent)
        except BaseException:  # `_tiny_repro_state` tries again, in a test, and shows the error there
            pass
        finally:
            lock.close()
    thread = threading.Thread(target=make, name="shared tiny run", daemon=True)
    thread.start()
    yield
    thread.join()


@pytest.fixture(scope="session")
def _tiny_repro_state(tmp_path_factory, worker_id):
    """Made once for all pytest-xdist workers (`_start_shared_run`), under a file lock in the folder they share;
    a worker that needs it before it is done waits for the lock."""
    folder = _shared_folder(tmp_path_factory, worker_id)
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this worker dies
        _make_shared_run(folder)
    project, modes = folder / "project", json.loads((folder / "modes.json").read_text())
    yield TinyRepro(project, (folder / "repro.stdout").read_text()), modes
    _restore_modes(project, modes)  # so that pytest can remove it later (the other worker only reads it)


@pytest.fixture
def tiny_repro(_tiny_repro_state) -> TinyRepro:
    """The tiny project (TINY_PARAMS) after one full `dvc repro` under `pipeline_env()`, made once per session
    for all xdist workers. Read-only; use `tiny_repro_copy` to change it."""
    return _tiny_repro_state[0]


@pytest.fixture
def tiny_repro_copy(_tiny_repro_state, tmp_path: Path) -> Path:
    """This test's own copy of the finished shared project: the whole folder, .git and .dvc (with its cache)
    included, which DVC takes as up to date."""
    shared, modes = _tiny_repro_state
    dest = tmp_path / "project"
    shutil.copytree(shared.project, dest, symlinks=True)
    _restore_modes(dest, modes)
    status = run(DVC + ["status"], dest, env=pipeline_env())
    assert "up to date" in status.stdout, status.stdout + status.stderr
    return dest
