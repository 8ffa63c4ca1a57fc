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
never commits it to git; an output `dvc.yaml` marks `cache: false` is copied
as is, as DVC's restore would leave it. A `persist: true` output is not copied
(a stage that reruns would start from it). Anything else is left to DVC.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Iterator

import yaml

from pipeline.dvc_cli import CommandError, run_git
from pipeline.outcome import LOCK_FILE, lock_stages, lock_text

_TEMPLATE = re.compile(r"\\\$\\\{[^}]*\\\}")  # an escaped `${...}` of a foreach stage's path


def _declared(entries) -> Iterator[tuple[str, dict]]:
    """(path, options) of a dvc.yaml `outs`, `metrics` or `plots` list."""
    for entry in entries or []:
        if isinstance(entry, str):
            yield entry, {}
        elif isinstance(entry, dict):
            for path, options in entry.items():
                yield str(path), options if isinstance(options, dict) else {}


def declared_patterns(dvc_yaml: dict, option: str, value: bool) -> list[re.Pattern]:
    """The output paths dvc.yaml declares with `option: value` (`cache: false`, `persist: true`), as patterns
    (a foreach stage's `${key}` matches any name)."""
    patterns = []
    for stage in (dvc_yaml.get("stages") or {}).values():
        body = stage.get("do", stage) if isinstance(stage, dict) else {}
        for section in ("outs", "metrics", "plots"):
            for path, options in _declared(body.get(section)):
                if options.get(option) is value:
                    patterns.append(re.compile(_TEMPLATE.sub("[^/]+", re.escape(path.rstrip("/"))) + r"\Z"))
    return patterns


def uncached_patterns(dvc_yaml: dict) -> list[re.Pattern]:
    """The paths dvc.yaml marks `cache: false`."""
    return declared_patterns(dvc_yaml, "cache", False)


def locked_outputs(stages: dict) -> list[str]:
    """Every output path of a dvc.lock's stages, in its order."""
    return [out["path"] for stage in stages.values() for out in stage.get("outs") or []]


def _ignored(root: Path, paths: list[str]) -> set[str]:
    """The paths git ignores in the worktree `root`."""
    if not paths:
        return set()
    try:
        out = run_git(root, "-c", "core.quotePath=off", "check-ignore", "--no-index", *paths)
    except CommandError:  # exit 1: none is ignored
        return set()
    return set(out.splitlines())


def reuse_outputs(project: Path, root: Path) -> list[str]:
    """Copy the workspace's `dvc.lock` and the outputs it lists into the experiment worktree `root`, within the
    rules above; the output paths copied. Nothing when the workspace has no lock."""
    try:
        text = lock_text(project)
        stages = lock_stages(text)
        dvc_yaml = yaml.safe_load((root / "dvc.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):  # an unreadable lock or dvc.yaml: DVC restores as usual
        return []
    if not stages:
        return []
    uncached, persisted = uncached_patterns(dvc_yaml), declared_patterns(dvc_yaml, "persist", True)
    present = [p for p in locked_outputs(stages) if (project / p).exists() and not (root / p).exists()
               and not any(pat.match(p) for pat in persisted)]
    loose = [p for p in present if any(pat.match(p) for pat in uncached)]
    cached = [p for p in present if p not in loose]
    for ignore in {Path(p).parent / ".gitignore" for p in cached}:
        if (project / ignore).is_file() and not (root / ignore).exists():
            (root / ignore).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(project / ignore, root / ignore)
    copied = loose + sorted(_ignored(root, cached))
    (root / LOCK_FILE).write_text(text, encoding="utf-8")
    for rel in copied:
        src, dst = project / rel, root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copy2(src, dst)
    return copied
