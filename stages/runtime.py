"""Device choice, seeding and progress bars shared by the stages."""
from __future__ import annotations

import os
import random
import sys

import numpy as np
import torch
from tqdm.auto import tqdm


def pick_device() -> torch.device:
    """CUDA when present, else CPU; `GANAUG_DEVICE` overrides (e.g. `cpu`)."""
    name = os.environ.get("GANAUG_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
