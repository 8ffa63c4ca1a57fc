"""An experiment workspace starts from the user's workspace: its `dvc.lock` and the outputs the lock lists.

`dvc repro` in a fresh worktree finds no outputs, so it restores every stage
the overrides leave alone from DVC's run cache, one by one, and rewrites
`dvc.lock` after each (about a third of a second a stage on the tiny test
project); a stage with an output DVC keeps no run cache for runs again. With
the workspace's lock and outputs copied in first, DVC finds those stages
unchanged ("didn't change") and skips them, as `dvc exp run` in the workspace
itself would. DVC still compares every copied file with the lock, so a file
that does not match is restored or rerun as before: the results are the same
either way.

What must not change is what the experiment's git commit holds. A cached
output is copied only where the worktree's `.gitignore` ignores it (the
workspace's DVC-written `.gitignore` files come along), so `dvc exp save`
never commits it to git; an output its stage in `dvc.yaml` marks `cache:
false` is copied as is, as DVC's restore would leave it. A `persist: true`
output is not copied (a stage that reruns would start from it). Anything else,
and any file that changes while it is copied, is left to DVC.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import yaml

from pipeline.dvc_cli import command_env
from pipeline.outcome import LOCK_FILE, lock_stages, lock_text, read_dvc_yaml

_TEMPLATE = re.compile(r"\\\$\\\{[^}]*\\\}")  # an escaped `${...}` of a foreach stage's path

CACHED, UNCACHED, PERSISTED = "cached", "uncached", "persisted"


def _declared(entries) -> Iterator[tuple[str, dict]]:
    """(path, options) of a dvc.yaml `outs`, `metrics` or `plots` list."""
    for entry in entries or []:
        if isinstance(entry, str):
            yield entry, {}
        elif isinstance(entry, dict):
            for path, options in entry.items():
                yield str(path), options if isinstance(options, dict) else {}


def declared_outputs(dvc_yaml: dict) -> dict[str, list[tuple[re.Pattern, dict]]]:
    """Each dvc.yaml stage's outputs as (pattern, options); a foreach stage's `${...}` matches any text."""
    stages = {}
    for name, stage in (dvc_yaml.get("stages") or {}).items():
        body = stage.get("do", stage) if isinstance(stage, dict) else {}
        stages[str(name)] = [(re.compile(_TEMPLATE.sub(".+", re.escape(path.rstrip("/"))) + r"\Z"), options)
                             for section in ("outs", "metrics", "plots") for path, options in _declared(body.get(section))]
    return stages


def kind(declared: dict[str, list[tuple[re.Pattern, dict]]], stage: str, path: str) -> str:
    """How an output of the lock's `stage` (`name` or `name@key`) is declared: PERSISTED if any of its
    stage's declarations that match it persists, UNCACHED if all of them are `cache: false`, else CACHED (also
    when none matches: it is then copied only where git ignores it)."""
    options = [o for pattern, o in declared.get(stage.split("@", 1)[0], []) if pattern.match(path)]
    if any(o.get("persist") is True for o in options):
        return PERSISTED
    return UNCACHED if options and all(o.get("cache") is False for o in options) else CACHED


def locked_outputs(stages: dict) -> list[tuple[str, str]]:
    """(stage, output path) of every output of a dvc.lock's stages, in its order."""
    return [(name, out["path"]) for name, stage in stages.items() for out in stage.get("outs") or []]


def ignored_by_git(root: Path, paths: list[str]) -> set[str]:
    """The paths git ignores in the worktree `root` (NUL-separated both ways: any file name)."""
    if not paths:
        return set()
    proc = subprocess.run(["git", "check-ignore", "-z", "--stdin", "--no-index"], cwd=root, env=command_env(),
                          input="\0".join(paths) + "\0", capture_output=True, text=True)
    return set(proc.stdout.split("\0")) & set(paths) if proc.returncode == 0 else set()  # 1: none ignored


def _copy(src: Path, dst: Path) -> bool:
    """Copy a file or folder; False (and nothing left at `dst`) if it changed under us, e.g. a `dvc repro`
    running in the workspace removed it: DVC then restores or reruns its stage in the worktree."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        if src.is_dir():
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copy2(src, dst)
        return True
    except (OSError, shutil.Error):
        if dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst, ignore_errors=True)
        else:
            dst.unlink(missing_ok=True)
        return False


def reuse_outputs(project: Path, root: Path) -> list[str]:
    """Copy the workspace's `dvc.lock` and the outputs it lists into the experiment worktree `root`, within the
    rules above; the output paths copied. Nothing when the workspace has no lock."""
    try:
        text = lock_text(project)
        stages = lock_stages(text)
        declared = declared_outputs(read_dvc_yaml(root))
    except (OSError, yaml.YAMLError):  # an unreadable lock or dvc.yaml: DVC restores as usual
        return []
    if not stages:
        return []
    present = [(kind(declared, stage, p), p) for stage, p in locked_outputs(stages)
               if (project / p).exists() and not (root / p).exists()]
    loose = [p for k, p in present if k == UNCACHED]
    cached = [p for k, p in present if k == CACHED]
    for ignore in {Path(p).parent / ".gitignore" for p in cached}:
        if (project / ignore).is_file() and not (root / ignore).exists():
            _copy(project / ignore, root / ignore)
    wanted = loose + sorted(ignored_by_git(root, cached))
    (root / LOCK_FILE).write_text(text, encoding="utf-8")
    return [rel for rel in wanted if _copy(project / rel, root / rel)]
