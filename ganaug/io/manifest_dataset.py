"""`ManifestDataset`: a ganaug dataset (e.g. an imported `data/augmented`) read through its manifest.

For downstream teams: a `torch.utils.data.Dataset` of the hard-label view (the
rows with a `label`: the class folders' images), whose labels are the manifest's,
never re-derived from folder names, with the rows of one origin when asked
(`origin="real"` or `"synthetic"`). Items are `(image, label)` like torchvision's
`ImageFolder` (a PIL image, or what `transform` makes of it). For every image with
the teacher's probabilities, use `ganaug.published.load`.

    from ganaug.io.manifest_dataset import ManifestDataset
    ds = ManifestDataset("augmented", origin="synthetic", transform=torchvision.transforms.v2.ToImage())
    ds.classes, ds.frame[["origin", "seed"]]
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd
from PIL import Image
from torch.utils.data import Dataset

from ganaug.config.errors import DataError
from ganaug.io.imagefolder import MANIFEST, manifest_classes, read_manifest, safe_join

ORIGINS = ("real", "synthetic", "source")


class ManifestDataset(Dataset):
    """(image, label) for every manifest row (of `origin`, when given); labels and class names from the manifest."""

    def __init__(self, root: str | Path, origin: Optional[str] = None,
                 transform: Optional[Callable[[Image.Image], Any]] = None):
        self.root = Path(root)
        df = read_manifest(self.root)
        where = self.root / MANIFEST
        if origin is not None and origin not in ORIGINS:
            raise DataError(f"{where}: origin must be one of {ORIGINS} or None, got {origin!r}")
        df = df[df["label"].notna()].astype({"label": "int64"})  # the hard-label view
        self.classes: list[str] = manifest_classes(df, where)
        self.class_to_idx = {name: k for k, name in enumerate(self.classes)}
        self.frame: pd.DataFrame = (df if origin is None else df[df["origin"] == origin]).reset_index(drop=True)
        self.samples = [(safe_join(self.root, rel), int(y)) for rel, y in zip(self.frame["path"], self.frame["label"])]
        self.targets = [y for _, y in self.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, label = self.samples[i]
        with Image.open(path) as img:
            img.load()
        return (self.transform(img) if self.transform else img), label
