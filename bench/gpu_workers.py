"""How many sweep cells one GPU takes at once: a Dask GPU worker running `ganaug sweep` cells.

On a CUDA machine with ganaug installed: a throw-away copy of the project (params.yaml as it ships, plus
`--set`), a local Dask scheduler and one `dask worker` of N processes x 1 thread (what
docs/operations.md tells a GPU worker to run), then two sweeps through it with `--executor dask`:

- `batch`: N default cells at once (seeds 1..N), the worker full;
- `single`: one cell alone (seed 0), the GPU to itself (skipped when `--budget` seconds would not fit it).

nvidia-smi is read every second meanwhile: GPU busy %, memory in all and per process. Writes the raw sweeps,
the samples and the summary (`--raw`) and the `bench:gpu_workers` section (`--out`).

    python -m bench.gpu_workers --workers 12 --raw bench/results/gpu_workers.json --out docs/benchmarks.md
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

from bench.common import DOC, command_line, machine, make_project, publish
from pipeline.sweep import raw, run_sweep
from pipeline.sweep_exec import DaskExecutor
from pipeline.sweep_grid import cells, grid_from_args

SECTION = "gpu_workers"


class GpuSampler(threading.Thread):
    """Every `every` seconds: time, GPU busy %, GPU memory used (MiB), memory of each compute process (MiB)."""

    def __init__(self, every: float = 1.0):
        super().__init__(daemon=True)
        self.every, self.rows, self.stop = every, [], threading.Event()
        self.enabled = shutil.which("nvidia-smi") is not None

    def query(self, *args: str) -> list[list[str]]:
        out = subprocess.run(["nvidia-smi", *args, "--format=csv,noheader,nounits"], capture_output=True, text=True)
        return [[x.strip() for x in line.split(",")] for line in out.stdout.strip().splitlines() if line.strip()]

    def run(self) -> None:
        while self.enabled and not self.stop.wait(self.every):
            gpu = self.query("--query-gpu=utilization.gpu,memory.used")
            apps = self.query("--query-compute-apps=pid,used_memory")
            if gpu:
                self.rows.append({"t": time.time(), "busy": float(gpu[0][0]), "memory": float(gpu[0][1]),
                                  "processes": [float(a[1]) for a in apps if len(a) == 2 and a[1].isdigit()]})


def start_worker(port: int, workers: int) -> tuple[list[subprocess.Popen], str]:
    """A Dask scheduler on `port` and one `dask worker` of `workers` processes x 1 thread; the address."""
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "GANAUG_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--port", str(port),
                               "--dashboard-address", ":0"], env=env, stderr=subprocess.DEVNULL),
             subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers",
                               str(workers), "--nthreads", "1", "--memory-limit", "0"], env=env,
                              stderr=subprocess.DEVNULL)]
    from distributed import Client

    with Client(address, timeout="60s") as client:
        client.wait_for_workers(workers, timeout=180)
    return procs, address


def sweep(project: Path, name: str, seeds: str, address: str, sets: list[str]) -> tuple[float, dict]:
    """The sweep of the default cell over `seeds` on the Dask worker at `address`, run as `ganaug sweep
    --executor dask --threads 1 --retries 0` runs it; its wall seconds and raw cells (what `--raw` writes)."""
    executor = DaskExecutor(str(project), address, threads=1)
    started = time.monotonic()
    try:
        outcomes = run_sweep(project, cells(grid_from_args(name, sets, seeds, []), project), executor, tries=1)
    finally:
        executor.close()
    return round(time.monotonic() - started, 1), raw(outcomes)


def phase_summary(name: str, at_once: int, wall: float, raw: dict, samples: list[dict], t0: float, t1: float) -> dict:
    """One sweep's numbers: cells, seconds per cell, cells an hour, GPU busy and memory while it ran."""
    ran = [c for c in raw["cells"] if c["status"] == "ran"]
    secs = sorted(c["record"]["seconds"] for c in ran)
    window = [s for s in samples if t0 <= s["t"] <= t1]
    stages: dict[str, list[float]] = {}
    for c in ran:
        for stage, s in c["record"]["stage_seconds"].items():
            stages.setdefault(stage, []).append(s)
    return {"phase": name, "at_once": at_once, "cells": len(raw["cells"]), "ran": len(ran), "wall_s": wall,
            "cell_s": secs, "cells_per_hour": round(3600 * len(ran) / wall, 1) if ran else 0.0,
            "gpu_busy_mean": round(statistics.fmean(s["busy"] for s in window), 1) if window else None,
            "gpu_busy_max": max((s["busy"] for s in window), default=None),
            "gpu_memory_peak_mib": max((s["memory"] for s in window), default=None),
            "process_memory_peak_mib": max((m for s in window for m in s["processes"]), default=None),
            "gpu_processes_max": max((len(s["processes"]) for s in window), default=None),
            "stage_median_s": {k: round(statistics.median(v), 1) for k, v in stages.items()}}


def mib(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.0f}"  # None: no nvidia-smi (a CPU smoke run)


def markdown(data: dict) -> str:
    head = ("| sweep | cells at once | cells ran | wall | seconds a cell (median, min-max) | cells an hour | "
            "GPU busy (mean / max) | GPU memory at peak (all / one process) | processes on the GPU at once |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for p in data["phases"]:
        s = p["cell_s"]
        span = f"{statistics.median(s):.0f} ({s[0]:.0f}-{s[-1]:.0f})" if s else "-"
        rows.append(f"| `{p['phase']}` | {p['at_once']} | {p['ran']} of {p['cells']} | {p['wall_s']:.0f} s | {span} | "
                    f"{p['cells_per_hour']} | {p['gpu_busy_mean']}% / {p['gpu_busy_max']}% | "
                    f"{mib(p['gpu_memory_peak_mib'])} / {mib(p['process_memory_peak_mib'])} MiB | {p['gpu_processes_max']} |")
    stages = sorted({k for p in data["phases"] for k in p["stage_median_s"]},
                    key=lambda k: -data["phases"][0]["stage_median_s"].get(k, 0))
    st = ("| stage | " + " | ".join(f"`{p['phase']}` median s" for p in data["phases"]) + " |\n|---|"
          + "---|" * len(data["phases"]) + "\n" + "\n".join(
              f"| {k} | " + " | ".join(str(p["stage_median_s"].get(k, "-")) for p in data["phases"]) + " |"
              for k in stages[:8]))
    commands = "; then ".join(f"`{c}`" for c in data["commands"])
    return (f"## Sweep cells on a GPU worker (`bench/gpu_workers.py`)\n\n- Command: {commands}\n"
            f"- Machine: {data['machine']}\n- The cell: params.yaml as it ships{''.join(f', `{x}`' for x in data['sets'])}; one Dask "
            f"worker of {data['workers']} processes x 1 thread; stages at 1 torch thread each\n\n"
            + head + "\n".join(rows) + "\n\nThe slowest stages (median seconds, from each cell's `sweep_cell.json`):\n\n"
            + st + "\n")


def merge(runs: list[dict]) -> dict:
    """One record of several runs on the same machine (a device call's time limit can split the phases)."""
    if len({r["machine"] for r in runs}) != 1:
        raise SystemExit("gpu_workers --render: the raw files come from different machines")
    data = {**runs[0], "commands": [c for r in runs for c in r["commands"]], "phases": [], "raw": {}, "samples": {}}
    for r in runs:
        data["phases"] += r["phases"]
        data["raw"].update(r["raw"])
        data["samples"].update({p["phase"]: r["samples"] for p in r["phases"]})
    return data


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=12, help="Dask worker processes: cells at once (default 12)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="a params.yaml override KEY=VALUE")
    ap.add_argument("--budget", type=float, default=None, help="seconds: skip the single cell if it would not fit")
    ap.add_argument("--phases", nargs="+", choices=["batch", "single"], default=["batch", "single"])
    ap.add_argument("--port", type=int, default=8786)
    ap.add_argument("--raw", type=Path, default=Path("bench/results/gpu_workers.json"))
    ap.add_argument("--out", type=Path, default=DOC)
    ap.add_argument("--render", type=Path, nargs="+", default=None, metavar="RAW",
                    help="run nothing: merge the phases of earlier runs' raw files (one machine) and write them")
    a = ap.parse_args(argv)
    if a.render:
        publish(a.out, SECTION, markdown(merged := merge([json.loads(p.read_text()) for p in a.render])), a.raw, merged)
        return 0
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="ganaug-gpu-workers-"))
    project = make_project(work / "project")
    sampler = GpuSampler()
    sampler.start()
    procs, address = start_worker(a.port, a.workers)
    data = {"commands": [command_line()], "machine": machine(), "workers": a.workers, "sets": a.sets,
            "phases": [], "raw": {}}
    try:
        for name, seeds, at_once in (("batch", f"1-{a.workers}", a.workers), ("single", "0", 1)):
            if name not in a.phases:
                continue
            if name == "single" and a.budget and data["phases"]:
                left = a.budget - (time.monotonic() - started)
                if left < 0.6 * statistics.median(data["phases"][0]["cell_s"] or [a.budget]):
                    print(f"gpu_workers: {left:.0f} s left, the single cell skipped", flush=True)
                    break
            t0 = time.time()
            wall, cells_raw = sweep(project, name, seeds, address, a.sets)
            data["raw"][name] = cells_raw
            data["phases"].append(phase_summary(name, at_once, wall, cells_raw, sampler.rows, t0, time.time()))
            data["samples"] = list(sampler.rows)
            publish(a.out, SECTION, markdown(data), a.raw, data)  # after each sweep: a cut run keeps what ended
    finally:
        sampler.stop.set()
        for p in procs:
            p.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
