"""Shared fixtures: tiny params, a throw-away git + DVC copy of the project, and one shared tiny `dvc repro`."""
from __future__ import annotations

import fcntl
import inspect
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

# Before torch loads its OpenMP runtime (in this process, and in every process the tests start): a thread that
# waits at an OpenMP barrier sleeps instead of spinning. The suite runs more threads than the machine has
# cores (three workers, their pipelines, the tests of thread counts), and spinning threads burned CPU the
# others needed (three concurrent runs of the throughput smoke test: 69 busy core-seconds, 57 passive).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# One copy of the project-in-a-temp-repo helpers, shared with the benchmarks.
from bench.common import ROOT, PROJECT_FILES, deep_update, make_project, tool_env  # noqa: F401 (re-exported to tests)
import forkserver

# Three pytest-xdist workers on two cores (`make test`): one torch thread each, in-process and in every stage
# subprocess (GANAUG_THREADS, read by ganaug/train/runtime.py configure_threads; inherited through tool_env()),
# so that the workers don't oversubscribe the cores.
os.environ.setdefault("GANAUG_THREADS", "1")
# The Prefect test server (`prefect_server` below) and the temporary servers of tests/test_prefect_production.py
# send no usage analytics: offline that only logs a false ERROR, and its writes compete for the SQLite database.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Nor does DVC: without this each `dvc` command in a project without `core.analytics false` (a fresh
# `dvc init`, a clone, the tests' own `dvc` calls) starts a `dvc daemon analytics` process (38 a suite).
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# Prefect's own intervals, shortened for the test servers, workers and runners (the same code, sooner): a
# worker or `serve` runner looks for scheduled runs every second instead of every 10, and a deployment run
# that waited for its concurrency slot is retried after 1 s instead of 30.
os.environ.setdefault("PREFECT_WORKER_QUERY_SECONDS", "1")
os.environ.setdefault("PREFECT_WORKER_PREFETCH_SECONDS", "1")
os.environ.setdefault("PREFECT_RUNNER_POLL_FREQUENCY", "1")
os.environ.setdefault("PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS", "1")
# A suite started in the background by a non-interactive shell (`make test &`, `nohup ...`) inherits SIGINT
# ignored, and so would every process it starts. A Prefect worker stops on SIGTERM by sending itself SIGINT:
# with SIGINT ignored it never stops (tests/test_prefect_production.py waited out its two-minute kill timeout).
# Python's own handler here means default SIGINT in every child.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

def _needs_shared_run(item) -> bool:
    """The test uses the session's shared tiny run (`tiny_repro`, `tiny_repro_copy`)."""
    return "_tiny_repro_state" in item.fixturenames


def pytest_configure(config):
    # torch for the processes that run tests (the xdist workers, or a run without -n), not the xdist
    # controller, which only hands tests out (about 2 s of CPU to import)
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        import torch

        torch.set_num_threads(int(os.environ["GANAUG_THREADS"]))
    config.addinivalue_line("markers", "heavy: a test of many seconds (a pipeline, a Prefect deployment); run early")


def pytest_collection_modifyitems(items):
    """Heavy tests first, those that need the shared run after those that do not (it is being made meanwhile),
    then the rest, each in collection order. pytest-xdist hands tests out in this order, so the short tests
    even out the workers at the end instead of one worker finishing a pipeline alone."""
    def rank(item) -> int:
        if item.get_closest_marker("heavy") is None:
            return 2
        return 1 if _needs_shared_run(item) else 0
    items.sort(key=rank)


# Small enough for a full `dvc repro` in well under a minute on 2 cores.
TINY_PARAMS = {
    "data": {"shots": 3, "image_size": 16},
    "classifier": {"width": 8, "steps": 30, "batch_size": 32},
    "gan": {"z_dim": 16, "g_width": 16, "d_width": 16, "steps": 20, "batch_size": 16, "checkpoint_every": 10, "ema_start": 5},
    "synth": {"per_class": 4},
    # checkpoint_every < steps: checkpoints are written, then removed when training ends (tests/test_reproducible.py)
    # source_images < the 901 source digits: the stream's seeded subset, and a published dataset of ~100 files
    "finetune": {"steps": 15, "batch_size": 16, "checkpoint_every": 5, "source_images": 60},
    "restore": {"width": 8, "steps": 12, "adapt_steps": 4, "batch_size": 16, "checkpoint_every": 5},
}

# This process's fork-server client (tests/forkserver.py), written now and served once `pipeline_env()` has
# started its server. DVC through it: with `pipeline_env()` (run()'s default), each `dvc` command is forked
# from the server; with an environment that names no server (tool_env(), plain_pipeline_env()), it is the
# real `python -m dvc`.
_CLIENT_PYTHON = str(forkserver.make_client() / "bin" / "python")
DVC = [_CLIENT_PYTHON, "-m", "dvc"]


def plain_pipeline_env() -> dict:
    """The environment of a full-pipeline run on a tiny project in plain Python processes: CPU whatever the
    machine has, GANAUG_THREADS as set above."""
    return {**tool_env(), "GANAUG_DEVICE": "cpu"}


_forked: dict[str, str] = {}
_forked_lock = threading.Lock()


def _session() -> tuple[str, int]:
    """A name for this test session, the same in each of its pytest-xdist workers, and the process id of its
    main process (the workers' parent)."""
    uid = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    return (uid, os.getppid()) if uid else (str(os.getpid()), os.getpid())


def pipeline_env() -> dict:
    """`plain_pipeline_env()` with each `python -m stages.*` and `python -m dvc` forked from a server that has
    imported torch and DVC (tests/forkserver.py): a tiny `dvc repro` in about a third of the time; and
    Prefect's workers, flow runs and `python -m pipeline` from a second one that has imported Prefect. One pair
    of servers for the session's workers, started by the first that asks. tests/test_reproducible.py checks
    that it gives the plain processes' outputs, byte for byte."""
    return forked_env(plain_pipeline_env())


def forked_env(env: dict[str, str]) -> dict[str, str]:
    """`env` for a `forked_python()` process: with `fork_client_env()`, so that its `python -m stages.*|dvc`
    and Prefect processes (workers, flow runs, `python -m pipeline`) are forked too."""
    return {**env, **fork_client_env()}


def fork_client_env() -> dict[str, str]:
    """The variables that make a `forked_python()` process and the Python processes it starts use the session's
    fork server (the client first on PATH, the server's socket), the server started by the first that asks."""
    with _forked_lock:  # the shared run's thread and a test may ask at once
        if not _forked:
            _forked.update(forkserver.start_shared(plain_pipeline_env(), Path(_CLIENT_PYTHON).parents[1], *_session()))
    return dict(_forked)


def forked_python() -> str:
    """The fork server's client as an interpreter (`pipeline_env()` started): a Python whose stage processes,
    and those of the Python processes it starts, are forked. For bench/uplift.py's pipelines."""
    pipeline_env()
    return _CLIENT_PYTHON


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 600,
        env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """`cmd` in `cwd`, its output captured; `env` defaults to `pipeline_env()` (DVC and the stages forked)."""
    proc = subprocess.run(cmd, cwd=cwd, env=env or pipeline_env(), capture_output=True, text=True, timeout=timeout)
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


def _shared_folder(tmp_path_factory, worker_id: str, name: str = "tiny_repro") -> Path:
    """A folder shared by the session's processes (the shared run's by default): in the parent of the xdist
    workers' base temp folders (one per session), or this session's own base temp folder without xdist."""
    base = tmp_path_factory.getbasetemp()
    folder = (base if worker_id == "master" else base.parent) / name
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
    if not any(_needs_shared_run(item) for item in request.session.items):
        yield
        return
    lock = open(_shared_folder(tmp_path_factory, worker_id) / "lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # the other worker makes it
        lock.close()
        yield
        return

    folder = Path(lock.name).parent
    then_reference = any("reference" in item.fixturenames for item in request.session.items)

    def make() -> None:
        try:
            _make_shared_run(folder)
        except BaseException:  # `_tiny_repro_state` tries again, in a test, and shows the error there
            pass
        finally:
            lock.close()
        if then_reference and (folder / "modes.json").exists():
            _start_sweep_reference(tmp_path_factory, worker_id, folder)
    thread = threading.Thread(target=make, name="shared tiny run", daemon=True)
    thread.start()
    yield
    thread.join()


def _start_sweep_reference(tmp_path_factory, worker_id, shared: Path) -> None:
    """Then the sweep tests' reference (tests/test_sweep.py, `reference`), in the same thread, unless another
    worker is making it: else the three workers reach its tests at about the same time and two of them wait
    on its lock, one core idle, while the third makes it."""
    import test_sweep

    folder = _shared_folder(tmp_path_factory, worker_id, "sweep_reference")
    with open(folder / "lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        try:
            test_sweep._make_reference(folder, *_shared_state(shared))
        except BaseException:  # the `reference` fixture tries again, in a test, and shows the error there
            pass


def _shared_state(folder: Path) -> tuple[TinyRepro, dict[str, int]]:
    """The finished shared run in `folder` and its files' original modes."""
    return (TinyRepro(folder / "project", (folder / "repro.stdout").read_text()),
            json.loads((folder / "modes.json").read_text()))


@pytest.fixture(scope="session")
def _tiny_repro_state(tmp_path_factory, worker_id):
    """Made once for all pytest-xdist workers (`_start_shared_run`), under a file lock in the folder they share;
    a worker that needs it before it is done waits for the lock."""
    folder = _shared_folder(tmp_path_factory, worker_id)
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this worker dies
        _make_shared_run(folder)
    shared, modes = _shared_state(folder)
    yield shared, modes
    _restore_modes(shared.project, modes)  # so that pytest can remove it later (the other worker only reads it)


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


# --- one Prefect test server for the session ----------------------------------------------------------

# Runs the server (argv[2:]) until it exits or process argv[1] (the test session's main process) is gone.
_SERVER_WATCH = """
import os, subprocess, sys, time
session, server = int(sys.argv[1]), subprocess.Popen(sys.argv[2:])
def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
while server.poll() is None and alive(session):
    time.sleep(1)
server.terminate()
try:
    server.wait(10)
except subprocess.TimeoutExpired:
    server.kill()
"""


def _start_prefect_server(folder: Path, session_pid: int) -> str:
    """Start what prefect_test_harness starts (the API and its services on a new SQLite database, no UI) in
    the background, watched: it stops when the process `session_pid` exits. Returns its API URL."""
    import prefect

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # No scheduler service: it would insert each cron deployment's runs for the next 100 days (hundreds of runs
    # and their events, written while the tests use the database), and a nightly run falling due during a
    # session would go to a test's worker. The tests read deployments' schedules; none needs the runs.
    env = {**os.environ, "PREFECT_HOME": str(folder / "home"), "PREFECT_UI_ENABLED": "0",
           "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
           "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{folder / 'prefect.db'}"}
    env.pop("PREFECT_API_URL", None)
    server = [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parents[1]), "--factory",
              "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
              "--log-level", "error", "--lifespan", "on"]
    with open(folder / "server.log", "w") as log:
        subprocess.Popen([sys.executable, "-c", _SERVER_WATCH, str(session_pid), *server], env=env,
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    return f"http://127.0.0.1:{port}/api"


def _wait_for_prefect_server(url: str, log: Path, timeout: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the Prefect test server at {url} did not start in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory, worker_id) -> str:
    """The API URL of the session's Prefect test server: a temporary SQLite database, as prefect_test_harness
    makes one, but one server for all xdist workers (a start is about 15 s of CPU). The first worker that needs
    it starts it; it stops when the test session's main process (the workers' parent) exits. Tests take it
    through `api_url`."""
    folder = _shared_folder(tmp_path_factory, worker_id, "prefect_server")
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held by the starter until the server answers
        url_file = folder / "url"
        if not url_file.exists():
            url_file.write_text(_start_prefect_server(folder, _session()[1]))
        url = url_file.read_text()
        _wait_for_prefect_server(url, folder / "server.log")
    return url


@pytest.fixture(scope="module")
def api_url(prefect_server):
    """The session's Prefect test server for this module's tests, its URL; set up as prefect_test_harness does
    it: the settings, also as the process-global settings context (Prefect's background threads read that
    one), and on the way out the log and event workers drained while the URL is still set (else, at exit, they
    would start a temporary server of their own to flush to)."""
    from prefect.context import _temporary_global_settings_context, get_settings_context
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        try:
            done = APILogWorker.instance().drain()
            if inspect.isawaitable(done):
                await done
        except RuntimeError:  # never started
            pass
        done = EventsWorker.drain_all()
        if inspect.isawaitable(done):
            await done

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}), \
            _temporary_global_settings_context(get_settings_context()):
        try:
            yield prefect_server
        finally:
            run_coro_as_sync(drain())
