"""Shared fixtures: tiny params, and a throw-away git + DVC copy of the project."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["stages", "dvc.yaml", "params.yaml", "pyproject.toml", ".dvcignore", ".gitignore"]

# Small enough for a full `dvc repro` in well under a minute on 2 cores.
TINY_PARAMS = {
    "data": {"shots": 3, "image_size": 16},
    "classifier": {"width": 8, "steps": 30, "batch_size": 32},
    "gan": {"z_dim": 16, "g_width": 16, "d_width": 16, "steps": 20, "batch_size": 16, "checkpoint_every": 10, "ema_start": 5},
    "synth": {"per_class": 4},
    "finetune": {"steps": 15, "batch_size": 16},
}


def deep_update(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_update(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def tool_env() -> dict:
    """Environment for subprocesses: this interpreter's `python` and `dvc` first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env.pop("PYTHONPATH", None)
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def make_project(dest: Path, params: dict | None = None) -> Path:
    """Copy the project into `dest`, write params, and make it a committed git + DVC repo."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    (dest / "params.yaml").write_text(yaml.safe_dump(deep_update(base, params or {}), sort_keys=False))
    run(["git", "init", "-q"], dest)
    run(["git", "config", "user.name", "ganaug-test"], dest)  # dvc exp commits need an identity
    run(["git", "config", "user.email", "test@localhost"], dest)
    run([sys.executable, "-m", "dvc", "init", "-q"], dest)
    run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "init"], dest)
    return dest


@pytest.fixture
def tiny_project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project", TINY_PARAMS)


@pytest.fixture
def in_tmp_cwd(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path
