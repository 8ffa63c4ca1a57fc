"""Resumable training checkpoints, shared by the supervised loop (`fit.py`) and the GAN trainer (`gan.py`).

A checkpoint is the whole training state plus a fingerprint of everything the
run's result depends on. `Fingerprint` hashes, for both loops alike:

- the run's settings (a JSON or repr string, without how often to checkpoint),
- its data and starting tensors (dtype, shape and bytes),
- the code that trains (the source files of the modules given),
- the device type (a CPU checkpoint is not resumed on CUDA or the other way round).

`save` writes atomically; `load` returns the state only when its fingerprint
matches, and says in one line why it ignores a file otherwise. Loading never
unpickles (`weights_only=True`).
"""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from types import ModuleType
from typing import Iterable, Optional

import numpy as np
import torch

from ganaug.io.atomic import atomic_file


class Fingerprint:
    """An incremental sha256 of a run's settings, data, code and device."""

    def __init__(self, settings: str, device: torch.device | str):
        self._h = hashlib.sha256()
        self._h.update(settings.encode())
        self._h.update(f"|device={torch.device(device).type}|".encode())

    def text(self, value: str) -> "Fingerprint":
        self._h.update(value.encode())
        return self

    def tensor(self, name: str, t: torch.Tensor | np.ndarray) -> "Fingerprint":
        arr = t.detach().cpu().contiguous() if isinstance(t, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(t))
        self._h.update(f"{name}|{arr.dtype}|{tuple(arr.shape)}|".encode())
        self._h.update(arr.reshape(-1).view(torch.uint8).numpy().tobytes() if arr.numel() else b"")
        return self

    def code(self, modules: Iterable[ModuleType]) -> "Fingerprint":
        for module in modules:
            self._h.update(Path(module.__file__).read_bytes())
        return self

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def save(path: Path, state: dict, fp: str) -> None:
    """Write `state` with its fingerprint to `path` atomically (temporary file, then rename)."""
    with atomic_file(path) as tmp:
        torch.save({**state, "fingerprint": fp}, tmp)


def load(path: Optional[Path], fp: str, who: str) -> Optional[dict]:
    """The state at `path` if it is a checkpoint of this run (same fingerprint), else None (with a line why)."""
    if path is None or not Path(path).is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError) as exc:
        print(f"{who}: ignoring unreadable checkpoint {path} ({exc.__class__.__name__}: {str(exc)[:200]})")
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != fp:
        print(f"{who}: ignoring checkpoint {path}: made for another config, data, code, device or starting model")
        return None
    return state
