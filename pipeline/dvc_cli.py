"""Running DVC (and git) as subprocesses, with the flow's own Python environment.

DVC's command line is its stable interface, so the flow talks to DVC only
through it: `python -m dvc ...` with the interpreter the flow runs in, and that
interpreter's directory first on PATH, so that a stage's `python -m stages.x`
runs with the same packages as the flow.
"""
from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

STDERR_TAIL_LINES = 40


class CommandError(RuntimeError):
    """A DVC or git command exited non-zero; the message holds its stderr."""


def command_env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The environment for DVC and its stages: this interpreter first on PATH, unbuffered output, plus `extra`."""
    env = {**os.environ, **(extra or {})}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"  # stage output reaches the log as it is printed
    return env


def thread_share(processes: int) -> int:
    """Torch threads for each of `processes` stage processes running at once: the cores split between them."""
    return max(1, (os.cpu_count() or 1) // max(1, processes))


def dvc_args(*args: str, wait_for_lock: bool = True) -> list[str]:
    """`python -m dvc [--wait-for-lock] args...` with the flow's interpreter."""
    return [sys.executable, "-m", "dvc", *(["--wait-for-lock"] if wait_for_lock else []), *args]


def run_quiet(args: Sequence[str], cwd: Path) -> str:
    """Run a short command, return its stdout; raise CommandError with its stderr on failure."""
    proc = subprocess.run(list(args), cwd=cwd, env=command_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise CommandError(f"`{describe(args)}` failed in {cwd} (exit {proc.returncode}): {detail}")
    return proc.stdout


def run_dvc(cwd: Path, *args: str) -> str:
    return run_quiet(dvc_args(*args), cwd)


def run_git(cwd: Path, *args: str) -> str:
    return run_quiet(["git", *args], cwd)


@dataclass
class Streamed:
    """What a streamed command left behind: exit code, all stdout lines, the tail of stderr."""

    returncode: int
    stdout: list[str] = field(default_factory=list)
    stderr_tail: list[str] = field(default_factory=list)


def run_streaming(args: Sequence[str], cwd: Path, on_line: Callable[[str, str], None],
                  env: Optional[dict[str, str]] = None) -> Streamed:
    """Run `args`, calling `on_line(stream, line)` for every stdout/stderr line as it arrives; `env` adds variables.

    The command runs in a process group of its own (`dvc repro` and the stage it starts). If this call
    ends in any other way than the command exiting (a task timeout, Ctrl-C, the flow process being
    terminated by a cancellation: see `terminate_children_on_sigterm`), the whole group is killed first,
    so no stage keeps running on its own; DVC's lock goes with its process.
    """
    if STOPPED.is_set():
        raise CommandError(f"`{describe(args)}` not started: {STOPPED.reason}")
    proc = subprocess.Popen(list(args), cwd=cwd, env=command_env(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1, errors="replace",
                            start_new_session=True)
    _CHILDREN.add(proc)
    result = Streamed(returncode=-1)
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)

    def pump(stream, name: str, sink: Callable[[str], None]) -> None:
        for raw in stream:
            line = raw.rstrip("\n")
            sink(line)
            on_line(name, line)

    readers = [
        threading.Thread(target=pump, args=(proc.stdout, "stdout", result.stdout.append), daemon=True),
        threading.Thread(target=pump, args=(proc.stderr, "stderr", tail.append), daemon=True),
    ]
    try:
        for reader in readers:
            reader.start()
        while proc.poll() is None:  # short waits: an exception sent to this thread (a timeout) gets through
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
        for reader in readers:
            reader.join()
    finally:
        if proc.returncode is None:  # still running: this call was interrupted
            kill_group(proc)
        _CHILDREN.discard(proc)
    result.returncode = proc.returncode
    result.stderr_tail = list(tail)
    return result


_CHILDREN: set[subprocess.Popen] = set()  # commands running now, each the leader of its process group


class _Stop(threading.Event):
    reason = ""


STOPPED = _Stop()  # set by `stop_all`: no further command starts in this process


def stop_reason() -> Optional[str]:
    """Why commands were stopped (`stop_all`), or None. (A function: tasks shipped to Dask must not hold the Event.)"""
    return STOPPED.reason if STOPPED.is_set() else None


def stop_all(reason: str) -> None:
    """Kill every running command and start no new one (a run's deadline has passed)."""
    STOPPED.reason = reason
    STOPPED.set()
    kill_children()


def kill_children() -> None:
    """Kill every command still running (at exit: e.g. Ctrl-C reached the main thread while a task ran in another)."""
    for proc in list(_CHILDREN):
        kill_group(proc)


atexit.register(kill_children)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group `proc` leads (a no-op once it has exited and its group is empty)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


_deferring = 0  # how many `sigterm_deferred` blocks are running
_deferred: list[int] = []  # the SIGTERM that arrived in one, acted on when the outermost ends


@contextmanager
def sigterm_deferred() -> Iterator[None]:
    """A block that a SIGTERM must not cut short (removing an experiment's worktree): with the handler of
    `terminate_children_on_sigterm` installed, a SIGTERM that arrives in it acts when the block ends."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _deferred:
            signum = _deferred.pop()
            _deferred.clear()
            handler = signal.getsignal(signum)
            if callable(handler):
                handler(signum, None)


def terminate_children_on_sigterm() -> None:
    """In the flow's process: on SIGTERM (how Prefect cancels a flow run a worker started, and how a
    process is usually stopped) kill every running command's process group, then hand over to the handler
    that was there (Prefect's records the run as cancelled or crashed), or else exit with status 143, as
    `SystemExit` so that `finally` blocks and context managers run first (an experiment's worktree is
    removed, file locks are released). Inside `sigterm_deferred`, all of that waits for the block's end."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if getattr(previous, "_ganaug", False):
        return

    def handler(signum, frame) -> None:
        if _deferring:
            _deferred.append(signum)
            return
        kill_children()
        if callable(previous):  # e.g. Prefect's own, which records the run as cancelled or crashed
            previous(signum, frame)
        else:
            raise SystemExit(128 + signum)

    handler._ganaug = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, handler)


def describe(args: Sequence[str]) -> str:
    """A command as the user would type it (`dvc repro ...`, not `/path/python -m dvc repro ...`)."""
    args = list(args)
    if args[:3] == [sys.executable, "-m", "dvc"]:
        args = ["dvc", *args[3:]]
    return " ".join(args)
