"""Torch thread settings: a stage takes torch's default unless GANAUG_THREADS says otherwise; a parallel flow
splits the cores between the stages that run at once."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from pipeline.dag import parse_dot
from pipeline.flow import stage_threads

THREADS = "from ganaug.train.runtime import configure_threads; import torch; print(configure_threads(torch.device('cpu')), torch.get_num_threads())"


def threads_in_fresh_process(value: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GANAUG_THREADS"}
    if value is not None:
        env["GANAUG_THREADS"] = value
    return subprocess.run([sys.executable, "-c", THREADS], cwd=ROOT, env=env, capture_output=True, text=True)


def test_stage_threads_default_is_torchs_and_the_variable_overrides_it():
    default = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                             capture_output=True, text=True).stdout.split()
    assert threads_in_fresh_process(None).stdout.split() == default * 2
    assert threads_in_fresh_process("1").stdout.split() == ["1", "1"]
    bad = threads_in_fresh_process("two")
    assert bad.returncode != 0 and "GANAUG_THREADS: expected a positive integer, got 'two'" in bad.stderr


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
