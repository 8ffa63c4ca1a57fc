"""What `dvc repro --single-item <stage>` did to a stage, read from what DVC leaves on disk, not from its log.

Before and after the command the flow takes a `snapshot` of the stage: its
`dvc.lock` entry (hashes of every dep, param and out) and the inode and mtime
of each of its outputs. DVC deletes a stage's outputs before it runs the
command, and checks them out afresh when it restores them from the run cache,
so a stage DVC ran or restored differs in one or the other; a stage DVC found
up to date differs in neither. `dvc.lock` is read under DVC's own repo lock,
so a stage finishing alongside (`--parallel`) is never seen half-written.

Only "ran" against "restored from run cache" comes from DVC's output: DVC
records nothing else that tells them apart.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

LOCK_FILE = "dvc.lock"
DVC_REPO_LOCK = Path(".dvc/tmp/lock")
RESTORED = "is cached - skipping run"  # DVC's line for a stage restored from its run cache
# libyaml's safe loader where PyYAML has it: ganaug's dvc.lock (about 30 KB, every stage's deps, params and
# outs) is read twice per stage run, about four times faster than with the pure-Python loader
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class StageSnapshot:
    entry: Optional[str]  # the stage's dvc.lock entry as canonical JSON; None before its first run
    outs: tuple[tuple[str, Optional[tuple[int, int]]], ...]  # (path, (inode, mtime_ns)); None when absent


def lock_text(root: Path) -> str:
    """`root/dvc.lock` ("" when there is none), read while holding DVC's repo lock (never half-written)."""
    from dvc.lock import Lock

    path = root / LOCK_FILE
    with Lock(str(root / DVC_REPO_LOCK), wait=True):
        return path.read_text(encoding="utf-8") if path.is_file() else ""


def read_dvc_yaml(root: Path) -> dict:
    """`root/dvc.yaml` as written (a foreach stage once); OSError or yaml.YAMLError when it cannot be read."""
    return yaml.load((root / "dvc.yaml").read_text(encoding="utf-8"), Loader=_SAFE_LOADER) or {}


def lock_stages(text: str) -> dict:
    """The stages of a dvc.lock's text, by name."""
    return (yaml.load(text, Loader=_SAFE_LOADER) or {}).get("stages") or {}


def read_lock(root: Path) -> dict:
    """The stages of `root/dvc.lock` ({} when there is none), read while holding DVC's repo lock."""
    return lock_stages(lock_text(root))


def _stat(path: Path) -> Optional[tuple[int, int]]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def snapshot(root: Path, stage: str) -> StageSnapshot:
    """The stage's lock entry and its outputs' identity (a foreach stage is named as DVC names it: `name@key`)."""
    entry = read_lock(root).get(stage)
    outs = [out["path"] for out in (entry or {}).get("outs", [])]
    return StageSnapshot(json.dumps(entry, sort_keys=True) if entry is not None else None,
                         tuple((p, _stat(root / p)) for p in outs))


def classify(before: StageSnapshot, after: StageSnapshot, stdout: list[str]) -> tuple[str, str]:
    """(status, detail) of a stage whose `dvc repro` succeeded, from its snapshots around the command."""
    if before == after:
        return "skipped", "up to date"
    if any(RESTORED in line for line in stdout):
        return "skipped", "restored from run cache"
    return "ran", "ran"
