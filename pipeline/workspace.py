"""Where a flow run's stages run: the user's workspace (serialised) or a separate experiment workspace.

* A plain run (no overrides) runs in the project's own workspace. Flow runs on
  one workspace are serialised by an exclusive lock file,
  `.dvc/tmp/ganaug-flow.lock`, held for the whole run (a second run waits, then
  finds every stage up to date); every DVC call also passes `--wait-for-lock`,
  so the flow waits for a `dvc` command a person runs at the same time instead
  of failing. (`--wait-for-lock` alone is not enough: DVC releases its repo lock
  while a stage command runs, and a second `dvc repro` of the same stage fails
  on DVC's per-output lock with "is busy".)
* A run with overrides runs in its own `git worktree` of HEAD, plus the
  workspace's uncommitted changes to tracked files (what `dvc exp run --temp`
  would take) and its `dvc.lock` and outputs (`pipeline/reuse.py`), with
  DVC's cache pointed at the project's cache: stages whose inputs did not
  change are found unchanged and skipped, or else restored from DVC's run
  cache, and concurrent experiment runs cannot touch each other or the
  workspace. The overrides are written to that worktree's params.yaml only; at the end
  `dvc exp save` records the result as a DVC experiment (the worktree shares
  git refs with the project, so `dvc exp show` in the project lists it) and the
  worktree is removed. Saves are serialised by `.dvc/tmp/ganaug-exp-save.lock`.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import yaml

from pipeline.dvc_cli import CommandError, run_dvc, run_git, sigterm_deferred
from pipeline.overrides import PARAMS_FILE, write_overrides
from pipeline.outcome import read_dvc_yaml, read_lock
from pipeline.reuse import reuse_outputs

LOCK_FILE = Path(".dvc/tmp/ganaug-flow.lock")
EXP_SAVE_LOCK_FILE = Path(".dvc/tmp/ganaug-exp-save.lock")
_SAVED_AS = re.compile(r"Experiment has been saved as: (\S+)")


class WorkspaceError(RuntimeError):
    """The project is not a usable git + DVC repository."""


@dataclass(frozen=True)
class Workspace:
    project: Path      # the user's repository
    root: Path         # where the stages run (== project, or an experiment worktree)
    is_experiment: bool


def find_project(repo: str | Path) -> Path:
    """The absolute root of the ganaug project at `repo`; WorkspaceError if it is not one."""
    root = Path(repo).expanduser().resolve()
    for need in ("dvc.yaml", ".dvc"):
        if not (root / need).exists():
            raise WorkspaceError(f"{root}: no {need} here; --repo must point at the root of a DVC project")
    try:
        run_git(root, "rev-parse", "--git-dir")
    except CommandError:
        raise WorkspaceError(f"{root}: not a git repository (DVC experiments need git)") from None
    return root


@contextmanager
def file_lock(path: Path, log: Callable[[str], None], waiting_for: str,
              waiting: Optional[Callable[[Optional[str]], None]] = None) -> Iterator[None]:
    """Hold an exclusive `flock` on `path`; wait (saying so) while another process or thread holds it.

    `waiting(why)` is called before a wait and `waiting(None)` after it (the flow shows the wait in Prefect).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            why = f"{path} is held ({fh.read().strip() or 'unknown'}); waiting for {waiting_for}"
            log(why)
            if waiting is not None:
                waiting(why)
            fcntl.flock(fh, fcntl.LOCK_EX)
            if waiting is not None:
                waiting(None)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}\n")
        fh.flush()
        try:
            yield
        finally:
            fh.truncate(0)
            fcntl.flock(fh, fcntl.LOCK_UN)


def workspace_lock(project: Path, log: Callable[[str], None],
                   waiting: Optional[Callable[[Optional[str]], None]] = None) -> AbstractContextManager[None]:
    """The project's flow lock: one flow run at a time in the workspace."""
    return file_lock(project / LOCK_FILE, log, "the other flow run on this workspace to finish", waiting)


@contextmanager
def project_workspace(project: Path, log: Callable[[str], None],
                      waiting: Optional[Callable[[Optional[str]], None]] = None) -> Iterator[Workspace]:
    """The user's own workspace, locked for this flow run."""
    with workspace_lock(project, log, waiting):
        yield Workspace(project=project, root=project, is_experiment=False)


@contextmanager
def experiment_workspace(project: Path, overrides: Mapping[str, Any],
                         log: Callable[[str], None]) -> Iterator[Workspace]:
    """A temporary git worktree of the project, sharing its DVC cache, with `overrides` applied."""
    tmp = Path(tempfile.mkdtemp(prefix="ganaug-exp-"))
    root = tmp / tmp.name  # a unique basename: git names the worktree's admin dir after it
    added = False
    try:
        with sigterm_deferred():  # a SIGTERM now acts once git has added the worktree, and `finally` removes it
            try:
                run_git(project, "worktree", "add", "--detach", str(root), "HEAD")
            except CommandError as exc:
                raise WorkspaceError(f"{project}: cannot create an experiment workspace (is there a commit?): "
                                     f"{exc}") from None
            added = True
        copied = copy_uncommitted(project, root)
        if copied:
            log(f"experiment workspace includes uncommitted changes to: {', '.join(copied)}")
        reused = reuse_outputs(project, root)
        if reused:
            log(f"experiment workspace starts from the workspace's dvc.lock and {len(reused)} of its outputs")
        cache_dir = run_dvc(project, "cache", "dir").strip().splitlines()[-1]
        write_local_config(root, {"cache": {"dir": cache_dir}, "core": {"site_cache_dir": str(tmp / "dvc-site-cache")}})
        if overrides:
            write_overrides(root / PARAMS_FILE, overrides)
        log(f"experiment workspace {root} (HEAD of {project}, DVC cache {cache_dir})")
        yield Workspace(project=project, root=root, is_experiment=True)
    finally:
        with sigterm_deferred():  # a run stopped now (a sweep killed as its cell ends) still removes it
            if added:
                remove_worktree(project, root)
            shutil.rmtree(tmp, ignore_errors=True)


def write_local_config(root: Path, sections: Mapping[str, Mapping[str, str]]) -> None:
    """Write `root/.dvc/config.local` (what `dvc config --local` writes, without starting DVC for each key)."""
    lines = []
    for section, values in sections.items():
        lines += [f"[{section}]"] + [f"    {key} = {value}" for key, value in values.items()]
    (root / ".dvc" / "config.local").write_text("\n".join(lines) + "\n")


def copy_uncommitted(project: Path, root: Path) -> list[str]:
    """Bring the workspace's uncommitted changes to git-tracked files (params.yaml, code) into `root`."""
    changed = [p for p in run_git(project, "diff", "--name-only", "--no-renames", "-z", "HEAD").split("\0") if p]
    for rel in changed:
        src, dst = project / rel, root / rel
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        elif dst.exists():
            dst.unlink()
    return changed


def remove_worktree(project: Path, root: Path) -> None:
    try:
        run_git(project, "worktree", "remove", "--force", str(root))
    except CommandError:
        shutil.rmtree(root, ignore_errors=True)
        run_git(project, "worktree", "prune")


def save_experiment(ws: Workspace, name: Optional[str], log: Callable[[str], None]) -> str:
    """`dvc exp save` the worktree, its new untracked files (metrics, plots) included; the experiment's name.

    Saves are serialised per project: `dvc exp save` in two worktrees of one
    repository at the same moment can fail (they share git's experiment refs).
    `dvc repro` has already committed every stage's outputs to DVC's cache and
    written them to dvc.lock; without a target `dvc exp save` commits every
    stage again, rewriting dvc.lock once per stage, so it is given one.
    """
    status = run_git(ws.root, "status", "--porcelain", "-z", "--untracked-files=all")
    untracked = [entry[3:] for entry in status.split("\0") if entry.startswith("?? ")]
    args = ["exp", "save", *(["--name", name] if name else []), *first_locked_stage(ws.root)]
    for path in untracked:
        args += ["--include-untracked", path]
    with file_lock(ws.project / EXP_SAVE_LOCK_FILE, log, "another run's `dvc exp save`"):
        out = run_dvc(ws.root, *args)
    if name:
        return name
    match = _SAVED_AS.search(out)
    if not match:
        raise CommandError(f"dvc exp save did not say which experiment it saved: {out.strip()}")
    return match.group(1)


def first_locked_stage(root: Path) -> list[str]:
    """The first stage of `root/dvc.lock` that `root/dvc.yaml` defines as a plain stage (a lock keeps the
    entries of stages since removed from dvc.yaml), as a one-item list; empty when there is none."""
    try:
        defined = read_dvc_yaml(root).get("stages") or {}
    except (OSError, yaml.YAMLError):
        return []
    plain = {name for name, body in defined.items() if isinstance(body, dict) and not {"foreach", "matrix"} & set(body)}
    return [name for name in read_lock(root) if name in plain][:1]


def experiment_exists(project: Path, name: str) -> bool:
    """Whether the project already has an experiment called `name` (on any commit)."""
    out = run_dvc(project, "exp", "list", "--all-commits", "--name-only")
    return name in out.split()


def head_experiments(project: Path) -> dict[str, str]:
    """Experiment name -> git ref, for the experiments of the current commit (HEAD); git only, no DVC start-up."""
    head = run_git(project, "rev-parse", "HEAD").strip()
    out = run_git(project, "for-each-ref", "--format=%(refname)", f"refs/exps/{head[:2]}/{head[2:]}/")
    return {ref.rsplit("/", 1)[-1]: ref for ref in out.split()}
