"""A pytest plugin: the machine's busy CPU seconds (all processes, /proc/stat) and the wall seconds around
each test, for finding what makes the suite slow. Run the suite one test at a time, on an idle machine:

    .venv/bin/python -m pytest -q -p bench.suite_cpu -p no:cacheprovider     # -> bench/results/suite_cpu.json

A session-wide fixture (the shared tiny run, the Prefect server) counts for the test that first needs it.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

OUT = Path(os.environ.get("GANAUG_SUITE_CPU", Path(__file__).resolve().parent / "results" / "suite_cpu.json"))
_ROWS: list[tuple[str, float, float]] = []


def busy_seconds() -> float:
    """CPU seconds spent so far by the whole machine in user, nice, system, irq and softirq time."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    cpu, wall = busy_seconds(), time.monotonic()
    yield
    _ROWS.append((item.nodeid, round(busy_seconds() - cpu, 1), round(time.monotonic() - wall, 1)))


def pytest_sessionfinish(session, exitstatus):
    if _ROWS:
        OUT.write_text(json.dumps(sorted(_ROWS, key=lambda r: -r[1]), indent=0) + "\n")
