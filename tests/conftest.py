"""Shared fixtures: tiny params, and a throw-away git + DVC copy of the project."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

# One copy of the project-in-a-temp-repo helpers, shared with the benchmarks.
from bench.common import ROOT, PROJECT_FILES, deep_update, make_project, tool_env  # noqa: F401 (re-exported to tests)

# Small enough for a full `dvc repro` in well under a minute on 2 cores.
TINY_PARAMS = {
    "data": {"shots": 3, "image_size": 16},
    "classifier": {"width": 8, "steps": 30, "batch_size": 32},
    "gan": {"z_dim": 16, "g_width": 16, "d_width": 16, "steps": 20, "batch_size": 16, "checkpoint_every": 10, "ema_start": 5},
    "synth": {"per_class": 4},
    "finetune": {"steps": 15, "batch_size": 16},
}


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def tiny_project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project", TINY_PARAMS)


@pytest.fixture
def in_tmp_cwd(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path
