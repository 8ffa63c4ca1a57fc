"""Torch thread settings: a stage takes torch's default unless GANAUG_THREADS says otherwise; a parallel flow
splits the cores between the stages that run at once."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from conftest import DVC, ROOT, pipeline_env
from ganaug.config.errors import UserError
from ganaug.train.runtime import configure_threads
from pipeline.dag import parse_dot
from pipeline.flow import stage_threads

# torch's own default (read before anything of ganaug is imported), what configure_threads chose, what torch has
THREADS = ("import torch; default = torch.get_num_threads(); from ganaug.train.runtime import configure_threads; "
           "print(default, configure_threads(torch.device('cpu')), torch.get_num_threads())")


def threads_in_fresh_process(value: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GANAUG_THREADS"}
    if value is not None:
        env["GANAUG_THREADS"] = value
    return subprocess.run([sys.executable, "-c", THREADS], cwd=ROOT, env=env, capture_output=True, text=True)


@pytest.mark.heavy
def test_stage_threads_default_is_torchs_and_the_variable_overrides_it(monkeypatch):
    default, chosen, now = threads_in_fresh_process(None).stdout.split()
    assert chosen == now == default
    assert threads_in_fresh_process("1").stdout.split()[1:] == ["1", "1"]
    monkeypatch.setenv("GANAUG_THREADS", "two")  # refused before torch is touched: checked in this process
    with pytest.raises(UserError, match="GANAUG_THREADS: expected a positive integer, got 'two'"):
        configure_threads(torch.device("cpu"))


def test_parallel_flow_splits_the_cores_over_the_widest_level(monkeypatch):
    monkeypatch.delenv("GANAUG_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    chain = parse_dot('strict digraph {\n"a";\n"b";\n"a" -> "b";\n}\n')
    fan = parse_dot('strict digraph {\n"p";\n"f@1";\n"f@2";\n"f@3";\n"e";\n'
                    '"p" -> "f@1";\n"p" -> "f@2";\n"p" -> "f@3";\n"f@1" -> "e";\n"f@2" -> "e";\n"f@3" -> "e";\n}\n')
    assert stage_threads(chain) is None  # one stage at a time: torch's default
    assert stage_threads(fan) == 8 // 3
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert stage_threads(fan) == 1
    monkeypatch.setenv("GANAUG_THREADS", "2")
    assert stage_threads(fan) is None  # the user's setting is passed on untouched


def test_torch_in_this_process_is_left_alone_without_the_variable(monkeypatch):
    from ganaug.train.runtime import configure_threads

    monkeypatch.delenv("GANAUG_THREADS", raising=False)
    before = torch.get_num_threads()
    assert configure_threads(torch.device("cpu")) == before == torch.get_num_threads()


QUEUE_STAGE = """\
stages:
  threads:
    cmd: python threads.py
    deps: [threads.py]
    params: [seed]
    metrics:
      - threads.json:
          cache: false
"""


QUEUE_SCRIPT = """\
import json, torch
from ganaug.train.runtime import configure_threads
json.dump({"threads": configure_threads(torch.device("cpu"))}, open("threads.json", "w"))
"""


def _run(cmd: list[str], cwd, env=None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.heavy
def test_ganaug_queue_gives_each_queued_experiment_its_share_of_the_cores(tmp_path):
    # the `dvc` commands that set up and read the queue are forked (conftest.DVC, pipeline_env()); the queue's
    # workers, started by `ganaug queue`, and what they run are plain processes, as a user's
    fork_env = pipeline_env()
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "dvc.yaml").write_text(QUEUE_STAGE)
    (repo / "params.yaml").write_text("seed: 0\n")
    (repo / "threads.py").write_text(QUEUE_SCRIPT)
    for cmd in (["git", "init", "-q"], DVC + ["init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "init"]):
        _run(cmd, repo, fork_env)
    for seed in (1, 2):
        _run(DVC + ["exp", "run", "--queue", "-S", f"seed={seed}", "--name", f"seed{seed}"], repo, fork_env)
    env = {k: v for k, v in os.environ.items() if k != "GANAUG_THREADS"}
    env["PYTHONPATH"] = str(ROOT)
    out = _run([sys.executable, "-m", "pipeline", "queue", "-j", "2"], repo, env)
    share = max(1, (os.cpu_count() or 1) // 2)
    assert f"GANAUG_THREADS={share}" in out

    def finished() -> dict[str, int]:
        rows = json.loads(_run(DVC + ["exp", "show", "--json"], repo, fork_env))
        done = {}
        for row in rows:
            for exp in row.get("experiments") or []:
                for rev in exp.get("revs") or []:
                    metrics = ((rev.get("data") or {}).get("metrics") or {}).get("threads.json") or {}
                    if "data" in metrics:
                        done[rev.get("name")] = metrics["data"]["threads"]
        return done

    deadline = time.monotonic() + 300  # the queue works in the background
    while len(finished()) < 2 and time.monotonic() < deadline:
        time.sleep(2)
    assert finished() == {"seed1": share, "seed2": share}, _run(DVC + ["queue", "status"], repo, fork_env)
