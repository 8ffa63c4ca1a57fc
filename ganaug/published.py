"""Read a published ganaug dataset (`data/augmented`, e.g. brought in with `dvc import`) for soft-target training.

    from ganaug.published import load
    ds = load("augmented")                    # every image: (image, probs, origin)
    real = load("augmented", origin="real")   # the real shots alone
    stream = load("augmented", origin=("synthetic", "source"))  # the images labelled by the teacher
    ds.classes, ds.temperature, ds.frame      # class names in label order, the probs' temperature, the manifest

Items are `(image, probs, origin)`: the image as a float tensor (C, H, W) in [0, 1]
(or what `transform` makes of the PIL image), the teacher's probabilities over the
classes (K,) as fine-tuning used them (one-hot for real shots), and the origin
(`real`, `synthetic` or `source`). The recipe that trains a model on it is in
docs/downstream.md. Paths are read through the manifest and never leave the folder.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from ganaug.config.errors import DataError
from ganaug.io.imagefolder import MANIFEST, safe_join

ORIGINS = ("real", "synthetic", "source")


def _to_tensor(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())  # (C, H, W)


class PublishedDataset(Dataset):
    """(image, probs, origin) for every manifest row of `origin` (one name or several; all when None)."""

    def __init__(self, root: str | Path, origin: Optional[str | Sequence[str]] = None,
                 transform: Optional[Callable[[Image.Image], Any]] = None):
        self.root = Path(root)
        where = self.root / MANIFEST
        try:
            df = pd.read_parquet(where)
        except FileNotFoundError:
            raise DataError(f"{where}: manifest not found (is {self.root} a published ganaug dataset?)") from None
        if "probs" not in df.columns:
            raise DataError(f"{where}: no 'probs' column; this dataset was published before soft labels")
        wanted = [origin] if isinstance(origin, str) else list(origin or ORIGINS)
        if not wanted or set(wanted) - set(ORIGINS):
            raise DataError(f"{where}: origin must be one or more of {ORIGINS}, or None, got {origin!r}")
        self.classes: list[str] = _classes(self.root)
        self.temperature: float = _temperature(self.root)
        self.frame = df[df["origin"].isin(wanted)].reset_index(drop=True)
        self.paths = [safe_join(self.root, rel) for rel in self.frame["path"]]  # every path checked first
        self.probs = torch.tensor(np.stack(self.frame["probs"].to_numpy()) if len(self.frame) else
                                  np.zeros((0, len(self.classes))), dtype=torch.float32)  # (N, K)
        self.origins: list[str] = self.frame["origin"].tolist()
        self.transform = transform or _to_tensor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor, str]:
        with Image.open(self.paths[i]) as img:
            img.load()
        return self.transform(img), self.probs[i], self.origins[i]


def _sheet(root: Path) -> dict:
    try:
        return json.loads((root / "datasheet.json").read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{root / 'datasheet.json'}: cannot read ({exc.__class__.__name__})") from None


def _classes(root: Path) -> list[str]:
    """Class names in label order, from the datasheet."""
    return [c["name"] for c in sorted(_sheet(root)["contents"]["classes"], key=lambda c: c["label"])]


def _temperature(root: Path) -> float:
    teacher = _sheet(root)["made_by"].get("teacher") or {}
    return float(teacher.get("temperature", 1.0))


def load(root: str | Path, origin: Optional[str | Sequence[str]] = None,
         transform: Optional[Callable[[Image.Image], Any]] = None) -> PublishedDataset:
    """The published dataset at `root` as a torch Dataset of (image, probs, origin)."""
    return PublishedDataset(root, origin, transform)
