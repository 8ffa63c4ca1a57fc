"""Shared fixtures: tiny params, a throw-away git + DVC copy of the project, and one shared tiny `dvc repro`."""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
import torch

# One copy of the project-in-a-temp-repo helpers, shared with the benchmarks.
from bench.common import ROOT, PROJECT_FILES, deep_update, make_project, tool_env  # noqa: F401 (re-exported to tests)

# Two pytest-xdist workers on two cores (`make test`): one torch thread each, in-process and in every stage
# subprocess (GANAUG_THREADS, read by ganaug/train/runtime.py configure_threads; inherited through tool_env()),
# so that the workers don't oversubscribe the cores.
os.environ.setdefault("GANAUG_THREADS", "1")
# Prefect servers started by the tests (prefect_test_harness) send no usage analytics: offline that only
# logs a false ERROR, and its writes compete for the test server's SQLite database.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
torch.set_num_threads(int(os.environ["GANAUG_THREADS"]))

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

# Tests using the shared run (`tiny_repro`, `tiny_repro_copy`) carry this mark, so that under
# `pytest -n 2 --dist loadgroup` they all land on one worker and the shared run happens once.
TINY_REPRO_GROUP = pytest.mark.xdist_group("tiny_repro")
DVC = [sys.executable, "-m", "dvc"]


def pipeline_env() -> dict:
    """The environment of every full-pipeline run on a tiny project: the same for the shared run and the
    runs compared with it (tests/test_reproducible.py): CPU whatever the machine has, GANAUG_THREADS as set above."""
    return {**tool_env(), "GANAUG_DEVICE": "cpu"}


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


# --- one full tiny `dvc repro`, shared by the tests of the `tiny_repro` group ------------------------

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


@pytest.fixture(scope="session")
def _tiny_repro_state(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("tiny_repro") / "project", TINY_PARAMS)
    out = run(DVC + ["repro"], project, env=pipeline_env())
    modes = _freeze(project)  # a test writing into the shared project fails at once
    yield TinyRepro(project, out.stdout), modes
    _restore_modes(project, modes)  # so that pytest can remove it later


def _check_grouped(request) -> None:
    """Under `--dist loadgroup` a test of the shared run must carry its group, or each worker makes its own run."""
    if getattr(request.config.option, "loadgroup", False) and "@" not in request.node.nodeid:
        pytest.fail(f"{request.node.nodeid}: --dist loadgroup ignored its xdist_group mark (TINY_REPRO_GROUP missing, "
                    "or pytest >= 9.2 with a pytest-xdist without the fix for pytest-dev/pytest-xdist#1386)")


@pytest.fixture
def tiny_repro(_tiny_repro_state, request) -> TinyRepro:
    """The tiny project (TINY_PARAMS) after one full `dvc repro` under `pipeline_env()`, made once per session
    (per xdist worker: mark the test with TINY_REPRO_GROUP). Read-only; use `tiny_repro_copy` to change it."""
    _check_grouped(request)
    return _tiny_repro_state[0]


@pytest.fixture
def tiny_repro_copy(_tiny_repro_state, tmp_path: Path, request) -> Path:
    """This test's own copy of the finished shared project: the whole folder, .git and .dvc (with its cache)
    included, which DVC takes as up to date."""
    _check_grouped(request)
    shared, modes = _tiny_repro_state
    dest = tmp_path / "project"
    shutil.copytree(shared.project, dest, symlinks=True)
    _restore_modes(dest, modes)
    status = run(DVC + ["status"], dest, env=pipeline_env())
    assert "up to date" in status.stdout, status.stdout + status.stderr
    return dest
