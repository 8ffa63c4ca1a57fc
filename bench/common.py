"""What both benchmarks share: the machine's description, the shared data folder, statistics,
throw-away project copies and the sections of `docs/benchmarks.md` they (re)write."""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

import yaml

from pipeline import datasets
from pipeline.stats import fmt_delta, markdown_table, mean_ci  # noqa: F401 (re-exported to the benchmarks)

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
PROJECT_FILES = ["stages", "ganaug", "dvc.yaml", "params.yaml", "pyproject.toml", ".dvcignore", ".gitignore"]
DOC_HEADER = """# ganaug benchmarks

Written by the scripts in `bench/`; each regenerates its own section (between the
`bench:<name>` markers) and leaves the rest of this file alone.
"""


class Skip(Exception):
    """A benchmark part cannot run here (e.g. the shared data is absent); the message says why."""


# ---------------------------------------------------------------- the machine and the data

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def machine() -> str:
    """One line: cores, CPU, GPU or not, torch and Python versions."""
    import torch  # here: the test session's controller process imports this module and never needs torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{usable_cores()} CPU cores ({cpu_model()}), {gpu}, torch {torch.__version__}, "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}")


def shared_file(name: str) -> str:
    """The path of a file of the shared data folder (`pipeline/datasets.py`), or Skip naming what is missing."""
    try:
        return datasets.shared_file(name)
    except datasets.MissingData as exc:
        raise Skip(str(exc)) from None


# ---------------------------------------------------------------- statistics (pipeline/stats.py, re-exported)

def fmt_ci(mean: float, half: Optional[float], digits: int = 3) -> str:
    return f"{mean:.{digits}f}" if half is None else f"{mean:.{digits}f} ± {half:.{digits}f}"


# ---------------------------------------------------------------- docs/benchmarks.md

def _markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


def write_section(doc: Path, name: str, body: str) -> None:
    """Replace the `name` section of `doc` with `body` (appended when absent; the file created when missing)."""
    start, end = _markers(name)
    text = doc.read_text(encoding="utf-8") if doc.is_file() else DOC_HEADER
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    tmp = doc.with_name(f".{doc.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(doc)


def publish(doc: Path, name: str, body: str, raw: Optional[Path], data: dict) -> None:
    """Write `body` as the `name` section of `doc`, `data` as JSON to `raw` (when given), and print `body`."""
    write_section(doc, name, body)
    if raw:
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.write_text(json.dumps(data, indent=2) + "\n")
    print(body)


def read_section(doc: Path, name: str) -> Optional[str]:
    start, end = _markers(name)
    m = re.search(re.escape(start) + r"\n(.*?)\n" + re.escape(end), doc.read_text(encoding="utf-8"), re.S)
    return m.group(1) if m else None


def command_line() -> str:
    """How this benchmark was started, as one could type it again from the project root."""
    module = Path(sys.argv[0]).resolve()
    name = f"bench.{module.stem}" if module.parent == ROOT / "bench" else sys.argv[0]
    return " ".join([".venv/bin/python -m", name, *sys.argv[1:]])


# ---------------------------------------------------------------- throw-away projects

def deep_update(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_update(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def parse_overrides(items: Sequence[str]) -> dict:
    """`["gan.steps=200", "synth.ratio=5"]` -> `{"gan": {"steps": 200}, "synth": {"ratio": 5}}` (YAML values)."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"error: --set {item!r}: expected section.key=value, e.g. gan.steps=200")
        section, name = key.split(".", 1)
        out = deep_update(out, {section: {name: yaml.safe_load(value)}})
    return out


def tool_env() -> dict:
    """Subprocess environment: this interpreter's `python` and `dvc` first on PATH, no analytics."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env.pop("PYTHONPATH", None)
    return env


def run(cmd: Sequence[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), cwd=cwd, env=tool_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc


def make_project(dest: Path, params: Optional[dict] = None) -> Path:
    """Copy the project's pipeline into `dest` with `params` merged into params.yaml; a committed git + DVC repo."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    (dest / "params.yaml").write_text(yaml.safe_dump(deep_update(base, params or {}), sort_keys=False))
    dvc = [sys.executable, "-m", "dvc"]
    git = shutil.which("git") is not None
    if not git:  # a machine without git (the lent GPU machine): DVC alone runs the pipeline
        print(f"bench: no git on PATH; {dest} is a DVC project without git (dvc init --no-scm)", flush=True)
    setup = [["git", "init", "-q"], ["git", "config", "user.name", "ganaug-bench"],
             ["git", "config", "user.email", "bench@localhost"]] if git else []
    commit = [["git", "add", "-A"], ["git", "commit", "-qm", "bench"]] if git else []
    for cmd in (*setup, [*dvc, "init", "-q", *([] if git else ["--no-scm"])],
                [*dvc, "config", "core.analytics", "false"], *commit):
        run(cmd, dest)
    return dest
