"""A fork server for the tests' tiny pipelines: torch and DVC imported once, each stage and `dvc` call forked.

A tiny `dvc repro` is 17 stage processes, and most of each one's few seconds is starting Python and
importing torch, torch._dynamo (the first optimiser imports it), pandas and scikit-learn; a `dvc` command
that finds little to do spends half its time importing DVC. Here one server process imports them once;
`python -m stages.<name> ...` (dvc.yaml's commands, found on PATH) and `python -m dvc ...` go to a small
client, `bin/python`, that hands its arguments, working folder, environment and standard streams to the
server, which forks a child that runs the module as `python -m` would and exits with its code.
A second server has imported Prefect instead (PREFECT_PRELOAD): Prefect's command line (`prefect worker
start`, `prefect deploy`), a flow run's supervisor and engine, and the project's command line (`python -m
pipeline run|serve|sweep`, a sweep's cells) go there (PREFECT_FORKED), each about 1.5-2 s of CPU to
import Prefect otherwise. Everything else the client is asked to run (`python toy.py`, a Dask worker) it
execs as the real Python, with the same process id (or runs as a subprocess where the client reports to a
child's client, RELAY_ENV); so does a client whose environment names no server (SOCKET_ENV), and, for the
Prefect server's modules, one whose PREFECT_ENV is not "1".

What differs from a fresh interpreter, and how it is kept out of the results:
- modules of the project (stages, ganaug) are never imported by the server, so the child imports the
  project's own copy, as edited by the test;
- Python's `random` and numpy's global generator are reseeded from the OS in each child, as a fresh
  process seeds them; torch's default generator is untouched by the server (its fixed start-up seed);
- the hash seed is the server's for every child;
- Prefect reads its settings (the environment, the working folder's prefect.toml) and sets up logging when
  imported: a child of the Prefect server reads and sets them up again from its own (and its
  `sys.executable` is the client, as in a Python the client execs, so that what it starts is forked too);
- a flow run's supervisor execs its engine (the same pid): the child's connection to its client stays open
  across the exec (RELAY_ENV), and the client exec'd there reports the engine's exit code on it (and stops
  the engine if that client is killed);
- a module that writes Prefect's settings into `os.environ` once running (`pipeline/cli.py`
  `prefect_environment()`, for a run without PREFECT_API_URL: its temporary server's start-up timeout and
  database) writes them after the child has read Prefect's settings, so Prefect does not see them: every
  forked `python -m pipeline` of the tests names its API URL, and the temporary-server test stays plain;
- a forked process is not in its client's process group, so killing the client's group does not reach the
  processes that the child started: the processes that the tests of killing, timeouts and cancellation stop
  with their group are plain (tests/test_prefect_production.py's killed and cancelled runs; the killed
  sweep of tests/test_sweep.py and its cell processes, whose `dvc` commands are forked).
tests/test_reproducible.py compares a run made through this server with one made by plain Python
processes, byte for byte, and Prefect's settings in a forked and a plain process.
Not used where thread counts (tests/test_threads.py: the fresh-process checks, `ganaug queue` and the processes
its queue runs) or timing (bench/throughput.py) are measured; the queue test's own `dvc` commands are forked.

`make_client()` writes a client; `start()` starts a server for one process (it exits when its parent does,
since it reads its standard input until end of file); `start_shared()` starts one server for all the
processes of a test session, the clients of its pytest-xdist workers, and the Prefect server beside it
(both exit when the session does).
"""
from __future__ import annotations

import array
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SOCKET_ENV = "GANAUG_TEST_FORKSERVER"  # the server's socket path, in the environment of its clients
_SERVERS: list[subprocess.Popen] = []  # kept referenced: their stdin pipes open for as long as this process lives
PRELOAD = ("torch", "torch._dynamo", "torch.optim", "numpy", "pandas", "pyarrow.parquet", "sklearn.metrics",
           "sklearn.datasets", "scipy.ndimage", "torchvision", "torchvision.transforms.v2", "PIL.Image", "yaml",
           "pydantic", "tqdm", "matplotlib", "matplotlib.pyplot",  # pyplot: 0.45 s of each stage that draws a PNG
           "dvc.cli", "dvc.cli.parser", "dvc.repo", "dvc.repo.index", "dvc.repo.reproduce", "dvc.repo.status",
           "dvc.stage", "dvc.dvcfile", "dvc.commands.repro", "dvc.commands.status", "scmrepo.git",
           # What DVC's commands import when they run, not when DVC loads (with what these import themselves):
           # about half a second of each forked `dvc` call (`dvc repro` in an up-to-date tiny project: 1.00 s of
           # CPU without them, 0.55 with).
           "networkx", "dvc.repo.graph", "dvc.repo.trie", "dvc.repo.stage", "dvc.repo.brancher", "dvc.repo.open_repo",
           "dvc.repo.experiments.save", "dvc.repo.experiments.show", "dvc.repo.experiments.remove",
           "dvc.repo.experiments.queue.celery", "dvc.repo.experiments.queue.workspace", "dvc.repo.metrics.diff",
           "dvc.repo.params.diff", "dvc.repo.plots", "dvc.repo.artifacts", "dvc.repo.datasets", "dvc.data_cloud",
           "dvc.ui.table", "dvc.utils.strictyaml", "dvc_data.fs", "dvc_data.hashfile.db.local",
           "dvc_data.hashfile.status", "ruamel.yaml", "dulwich.porcelain", "pygit2", "scmrepo.fs", "platformdirs")
FORKED = ("stages.", "dvc")  # `-m` modules the client sends to the server: the stages, and DVC's command line
# `-m` modules sent to the second server (the socket's path + PREFECT_SUFFIX), which has imported Prefect: a
# server of their own, so that no stage or `dvc` command runs with Prefect imported (its import sets up logging,
# the root logger's included). A flow run's supervisor prepares the run, then execs its engine (the same pid).
PREFECT_FORKED = ("prefect", "prefect.runner._workspace_supervisor", "prefect.engine", "pipeline", "pipeline.")
PREFECT_SUFFIX = "-prefect"
# "1" where the client sends PREFECT_FORKED to that server; a process whose process group is killed with what it
# started (the killed sweep of tests/test_sweep.py) sets it to '' and runs them as the real Python.
PREFECT_ENV = "GANAUG_TEST_FORK_PREFECT"
# "pid:fd:inode", set where a Prefect server's child execs the client: the child's connection to its own client,
# kept open across the exec. The client exec'd there (the same pid) reports its exit code on it, as the child's.
RELAY_ENV = "GANAUG_TEST_FORKSERVER_RELAY"
PREFECT_PRELOAD = ("prefect", "prefect.main", "prefect.engine", "prefect.flow_engine", "prefect.cli",
                   "prefect.workers.process", "prefect.runner", "prefect.deployments", "prefect.artifacts",
                   "prefect.client.orchestration", "prefect.runner._workspace_supervisor", "pydantic",
                   "pydantic_settings", "yaml", "numpy", "httpx", "anyio", "rich", "ruamel.yaml")


# --- the wire: one JSON request with three file descriptors; the child's pid, then its exit code --------

def _send_request(sock: socket.socket, request: dict) -> None:
    data = json.dumps(request).encode()
    fds = array.array("i", [0, 1, 2])
    sock.sendmsg([struct.pack("!I", len(data)), data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])


def _recv_exact(sock: socket.socket, n: int, fds: list | None = None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if fds is not None and not fds:
            msg, anc, _, _ = sock.recvmsg(n - got, socket.CMSG_SPACE(3 * 4))
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(array.array("i", raw[: len(raw) - len(raw) % 4]))
        else:
            msg = sock.recv(n - got)
        if not msg:
            raise EOFError
        chunks.append(msg)
        got += len(msg)
    return b"".join(chunks)


def _recv_request(sock: socket.socket) -> tuple[dict, list[int]]:
    fds: list[int] = []
    head = _recv_exact(sock, 4, fds)
    body = _recv_exact(sock, struct.unpack("!I", head)[0])
    return json.loads(body), fds


# --- the client (`bin/python`) ---------------------------------------------------------------------

CLIENT = """#!{python} -S
import sys
sys.path.insert(0, {folder!r})
import forkserver
forkserver.client({python!r}, {client!r}, sys.argv[1:])
"""


def _server_for(path: str | None, argv: list[str]) -> str | None:
    """The socket of the server that runs `python ARGV`, or None where it runs as the real Python."""
    def among(names: tuple[str, ...]) -> bool:
        return any(argv[1] == m or (m.endswith(".") and argv[1].startswith(m)) for m in names)
    if not path or len(argv) < 2 or argv[0] != "-m":
        return None
    if among(FORKED):
        return path
    return path + PREFECT_SUFFIX if among(PREFECT_FORKED) and os.environ.get(PREFECT_ENV) == "1" else None


def client(real_python: str, client_path: str, argv: list[str]) -> None:
    """`python ARGS`: `-m` of a module in FORKED or PREFECT_FORKED goes to its server (and where a child of the
    Prefect server exec'd this client, the exit code goes to that child's client too); anything else is exec'd
    (same pid) as the real Python named by the client's path, so that its `sys.executable` is the client and
    the Python processes it starts (`sys.executable -m ...`, or `python` first on PATH, as bench/common.py
    tool_env() puts it) are clients too. The client's folder is a view of the real environment (pyvenv.cfg,
    lib/) for that."""
    relay = _relay()
    path = _server_for(os.environ.get(SOCKET_ENV), argv)
    if not (path and os.path.exists(path)):
        if relay is None:
            os.execv(real_python, [client_path, *argv])
        proc = subprocess.Popen([client_path, *argv], executable=real_python)
        _forward_signals(proc.pid)
        _watch(relay, proc.pid)
        code = proc.wait()
        code = 128 - code if code < 0 else code
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        _send_request(sock, {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "executable": client_path})
        pid = struct.unpack("!i", _recv_exact(sock, 4))[0]
        _forward_signals(pid)
        if relay is not None:
            _watch(relay, pid)
        try:
            code = struct.unpack("!i", _recv_exact(sock, 4))[0]
        except EOFError:  # the child died without reporting (killed)
            code = 128 + signal.SIGKILL
    if relay is not None:
        _DONE.set()
        try:
            relay.sendall(struct.pack("!i", code))
        except OSError:  # its client is gone
            pass
    sys.exit(code)


def _forward_signals(pid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # what a killed client gets, its stage gets
        signal.signal(sig, lambda s, _f: os.kill(pid, s))


def _relay() -> socket.socket | None:
    """Where a forked child that exec'd this client (the same pid) waits to report: its client's connection."""
    pid, fd, inode = (os.environ.pop(RELAY_ENV, "").split(":") + ["", "", ""])[:3]
    try:
        if pid != str(os.getpid()) or str(os.fstat(int(fd)).st_ino) != inode:
            return None
    except (OSError, ValueError):
        return None
    return socket.socket(fileno=int(fd))


_DONE = threading.Event()  # the code to relay is known


def _watch(relay: socket.socket, pid: int) -> None:
    """The child's client gone (killed) before `pid` ended: stop `pid` and exit, as the child itself would have."""
    def watch():
        relay.recv(1)
        if not _DONE.is_set():
            os.kill(pid, signal.SIGKILL)
            os._exit(128 + signal.SIGKILL)
    threading.Thread(target=watch, daemon=True).start()


# --- the server and its children -----------------------------------------------------------------

def _child(conn: socket.socket, request: dict, fds: list[int], prefect: bool) -> None:
    """Become the stage process: its streams, folder, environment and argv; run the module; report. `prefect`:
    the Prefect server's child."""
    import random
    import runpy
    import traceback

    import numpy as np

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    if prefect:
        sys.executable = request["executable"]  # as in the client's own Python: the processes it starts are clients
        _prefect_from_environment()
        _relay_on_exec(conn, request["executable"])
    argv = request["argv"]
    module = argv[1]
    sys.argv = [module, *argv[2:]]  # runpy puts the module's file in argv[0]
    pythonpath = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:1] = [request["cwd"], *pythonpath]  # `python -m`: the working folder first, then PYTHONPATH
    random.seed()
    np.random.seed()
    conn.sendall(struct.pack("!i", os.getpid()))

    def watch_client():  # the client gone (killed): stop, as a stage whose parent is killed would be
        try:
            conn.recv(1)
        finally:
            os._exit(128 + signal.SIGKILL)
    threading.Thread(target=watch_client, daemon=True).start()

    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    conn.sendall(struct.pack("!i", code & 0xFF))
    os._exit(code & 0xFF)


def _relay_on_exec(conn: socket.socket, client_path: str) -> None:
    """Where this child execs the client (a flow run's supervisor its engine, `os.execvpe` -> `os.execve`), that
    client gets this child's connection to its own client (RELAY_ENV), to report the exit code on."""
    execve = os.execve

    def execve_relaying(path, args, env):
        if path == client_path:
            os.set_inheritable(conn.fileno(), True)
            env = {**env, RELAY_ENV: f"{os.getpid()}:{conn.fileno()}:{os.fstat(conn.fileno()).st_ino}"}
        execve(path, args, env)
    os.execve = execve_relaying


def _prefect_from_environment() -> None:
    """Prefect read its settings (environment, working folder) and set up logging when the server imported it:
    both again, as a fresh process importing Prefect here would."""
    from prefect.context import refresh_global_settings_context
    from prefect.logging.configuration import setup_logging

    refresh_global_settings_context()
    setup_logging(incremental=False)


def _exit_with_parent() -> None:
    while os.read(0, 1 << 16):  # the raw fd: no Python-level lock for a forked child to inherit held
        pass
    os._exit(0)


def _exit_with_session(pid: int, folder: str) -> None:
    """A shared server's (`start_shared`): once the test session's main process `pid` is gone, remove the
    server's folder and exit."""
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
            os._exit(0)
        time.sleep(1)


def serve(path: str, session_pid: int | None = None) -> None:
    import importlib

    if session_pid is None:
        threading.Thread(target=_exit_with_parent, daemon=True).start()
    else:
        threading.Thread(target=_exit_with_session, args=(session_pid, os.path.dirname(path)), daemon=True).start()
    prefect = path.endswith(PREFECT_SUFFIX)
    for name in PREFECT_PRELOAD if prefect else PRELOAD:
        importlib.import_module(name)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        request, fds = _recv_request(conn)
        if os.fork() == 0:
            server.close()
            _child(conn, request, fds, prefect)
        conn.close()
        for fd in fds:
            os.close(fd)


def make_client() -> Path:
    """A new folder with the client, `bin/python`, and a view of this environment (pyvenv.cfg, lib/), so that
    Python started as the client finds its packages; its server, if any, is started later by `start()`."""
    folder = Path(tempfile.mkdtemp(prefix="ganaug-fork-"))  # short: a socket path has at most 107 bytes
    (folder / "bin").mkdir()
    (folder / "lib").symlink_to(Path(sys.prefix) / "lib")
    if (Path(sys.prefix) / "pyvenv.cfg").is_file():
        shutil.copy(Path(sys.prefix) / "pyvenv.cfg", folder / "pyvenv.cfg")
    client_path = folder / "bin" / "python"
    client_path.write_text(CLIENT.format(python=sys.executable, client=str(client_path),
                                         folder=str(Path(__file__).parent)))
    client_path.chmod(0o755)
    return folder


def _server(env: dict[str, str], sock: Path, session_pid: int | None = None) -> subprocess.Popen:
    """A server at `sock`: this process's (it exits when this process does), or with `session_pid` the test
    session's (in a session of its own, exiting when process `session_pid` does)."""
    shared = [] if session_pid is None else [str(session_pid)]
    proc = subprocess.Popen([sys.executable, __file__, str(sock), *shared], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=session_pid is not None)
    _SERVERS.append(proc)
    return proc


def _ready(proc: subprocess.Popen) -> subprocess.Popen:
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"a fork server did not start (exit code {proc.wait()})")
    return proc


def _client_env(env: dict[str, str], folder: Path, sock: Path) -> dict[str, str]:
    """The variables that send `python -m stages.*` and `python -m dvc` to the server at `sock`: PATH with the
    client (`<folder>/bin/python`) first, and the socket; and Prefect's processes to the server beside it, where
    there is one (`start_shared()`)."""
    return {"PATH": f"{folder / 'bin'}{os.pathsep}{env.get('PATH', '')}", SOCKET_ENV: str(sock), PREFECT_ENV: "1"}


def start(env: dict[str, str], folder: Path | None = None) -> dict[str, str]:
    """Start a server with `env` (its children see their own clients' environments) for the client in `folder`
    (a new one by default), for this process alone: it exits with it. Returns the client's variables
    (`_client_env`)."""
    folder = folder or make_client()
    _ready(_server(env, folder / "socket"))
    return _client_env(env, folder, folder / "socket")


def start_shared(env: dict[str, str], folder: Path, session: str, session_pid: int) -> dict[str, str]:
    """`start()`, but one server for every process of a test session (its pytest-xdist workers, named alike by
    `session`): the first caller starts it, under a lock; the others find it. Each start costs seconds of CPU
    (the imports of PRELOAD). The server exits when the session's main process `session_pid` does."""
    shared = Path(tempfile.gettempdir()) / f"ganaug-fork-{session}"  # short: a socket path has at most 107 bytes
    shared.mkdir(exist_ok=True)
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (shared / "ready").exists():  # both servers, their imports at the same time
            servers = [_server(env, shared / name, session_pid) for name in ("socket", "socket" + PREFECT_SUFFIX)]
            for proc in servers:
                _ready(proc).stdin.close()  # (it watches the session instead)
            (shared / "ready").touch()
    return _client_env(env, folder, shared / "socket")


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
