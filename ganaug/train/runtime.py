"""Device choice, seeding and progress bars shared by the stages."""
from __future__ import annotations

import os
import random
import sys

import numpy as np
import torch
from tqdm.auto import tqdm

from ganaug.config.errors import UserError


def pick_device() -> torch.device:
    """CUDA when present, else CPU; `GANAUG_DEVICE` overrides (e.g. `cpu`). Sets torch's threads (`configure_threads`)."""
    name = os.environ.get("GANAUG_DEVICE")
    device = torch.device(name) if name else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    configure_threads(device)
    return device


def configure_threads(device: torch.device) -> int:
    """Torch's intra-op threads for this process: `GANAUG_THREADS` if set, else torch's default; return the count.

    Torch's default is one thread per core, the fastest on an idle machine
    (docs/benchmarks.md, `bench/throughput.py`). When several stages or jobs share
    the cores (`ganaug run --parallel`, `bench/uplift.py --jobs`, the test suite),
    each should get its share instead: OpenMP threads that wait for a descheduled
    peer make a step many times slower. Those callers set `GANAUG_THREADS`.
    """
    value = os.environ.get("GANAUG_THREADS", "").strip()
    if not value:
        return torch.get_num_threads()
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"GANAUG_THREADS: expected a positive integer, got {value!r}")
    n = int(value)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def progress(iterable=None, **kwargs):
    """tqdm that stays quiet when stderr is not a terminal (CI, DVC logs)."""
    kwargs.setdefault("disable", not sys.stderr.isatty())
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


def open_live(directory: str):
    """A dvclive logger for training curves that leaves dvc.yaml and experiments alone.

    The curves land in `<directory>/plots/metrics/*.tsv` (declared as plots in
    dvc.yaml, so `dvc plots show` draws them).
    """
    from dvclive import Live

    return Live(dir=directory, save_dvc_exp=False, dvcyaml=None, report=None)
