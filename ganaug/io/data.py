"""Datasets: loading (embedded digits, `.npz`, ImageFolder), class selection, shot sampling,
and the prepared-set files the stages pass to each other.

Every image set in memory is an `ImageSet`: uint8 images (N, C, H, W), int64
labels 0..K-1 and K class names. Prepared sets are stored as `.npz` with plain
arrays only (no pickle), so any stage can load them safely.
"""
from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ganaug.config.errors import DataError
from ganaug.io.imagefolder import (MANIFEST, check_class_names, list_image_folder, manifest_classes, read_image,
                                  read_manifest, safe_join)

EMBEDDED = ("digits",)


@dataclass
class ImageSet:
    x: np.ndarray  # (N, C, H, W) uint8
    y: np.ndarray  # (N,) int64 in 0..K-1
    class_names: list[str]
    skipped: list[str] = field(default_factory=list)  # files left out with on_bad_image=skip

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> "ImageSet":
        return ImageSet(self.x[idx], self.y[idx], list(self.class_names), list(self.skipped))

    def counts(self) -> dict[str, int]:
        return {name: int((self.y == k).sum()) for k, name in enumerate(self.class_names)}


@dataclass
class LoadOptions:
    image_size: int
    channels: int
    on_bad_image: str = "error"
    max_image_pixels: int = 4096 * 4096


# ---------------------------------------------------------------- conversions

def convert_array(x: np.ndarray, opts: LoadOptions) -> np.ndarray:
    """Any (N, H, W) / (N, H, W, C) uint8-like array -> uint8 (N, C, S, S)."""
    if x.ndim == 3:
        x = x[..., None]
    x = x.astype(np.float32)
    if x.shape[-1] == 4:  # RGBA: composite on black
        x = x[..., :3] * (x[..., 3:] / 255.0)
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # (N, C, H, W)
    if t.shape[1] == 3 and opts.channels == 1:
        t = (t * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif t.shape[1] == 1 and opts.channels == 3:
        t = t.expand(-1, 3, -1, -1)
    if t.shape[-2:] != (opts.image_size, opts.image_size):
        t = F.interpolate(t, size=(opts.image_size,) * 2, mode="bilinear", antialias=True, align_corners=False)
    return t.round().clamp(0, 255).to(torch.uint8).numpy()


def _class_names_for(labels: np.ndarray) -> list[str]:
    width = len(str(int(labels.max())))
    return [str(k).zfill(width) for k in range(int(labels.max()) + 1)]


# ---------------------------------------------------------------- loaders

def load_digits_set(opts: LoadOptions) -> ImageSet:
    """scikit-learn's bundled 8x8 digits (1,797 real images, 10 classes)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images * (255.0 / 16.0)).round().astype(np.uint8)  # (N, 8, 8)
    return ImageSet(convert_array(x, opts), d.target.astype(np.int64), [str(k) for k in range(10)])


_NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an `.npz` archive (never unpickles); DataError naming the file otherwise."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except _NPZ_ERRORS as exc:
        raise DataError(f"{path}: not a readable .npz ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # a bare .npy array
        raise DataError(f"{path}: not an .npz archive of named arrays (expected x and y)")
    try:
        with loaded as f:
            return {k: f[k] for k in f.files}
    except _NPZ_ERRORS as exc:
        raise DataError(f"{path}: not a readable .npz ({exc.__class__.__name__}: {exc})") from None


def check_image_array(path: Path, x: np.ndarray) -> None:
    """`x` must be (N, H, W) or (N, H, W, C) pixels in 0..255."""
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3, 4)):
        raise DataError(f"{path}: x must be (N, H, W) or (N, H, W, C) with C in 1, 3, 4; got shape {x.shape}")
    if x.dtype.kind not in "uif":
        raise DataError(f"{path}: x must hold numeric pixels (0..255), got dtype {x.dtype}")
    if x.size and x.dtype != np.uint8:
        lo, hi = float(np.min(x)), float(np.max(x))
        if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0 and hi <= 255):
            raise DataError(f"{path}: x must hold pixels in 0..255; found values {lo:g}..{hi:g}")


def check_labels(path: Path, y: np.ndarray, n_images: int, names: list[str]) -> None:
    """`y` must be N integer labels in 0..K-1."""
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: y must be a 1-D array of integer labels, got dtype {y.dtype} shape {y.shape}")
    if len(y) != n_images:
        raise DataError(f"{path}: x has {n_images} images but y has {len(y)} labels")
    if n_images == 0:
        raise DataError(f"{path}: no images (x and y are empty)")
    if y.min() < 0:
        raise DataError(f"{path}: labels must be class indices >= 0; found {int(y.min())}")
    if y.max() >= len(names):
        raise DataError(f"{path}: labels must lie in 0..{len(names) - 1} ({len(names)} classes); "
                        f"found {int(y.min())}..{int(y.max())}")


def load_npz_set(path: Path, opts: LoadOptions) -> ImageSet:
    """An `.npz` with `x` (N, H, W[, C]) and integer `y`; optional `class_names`."""
    arrays = read_npz(path)
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing array(s) {missing} (has {sorted(arrays)})")
    x, y = arrays["x"], arrays["y"]
    check_image_array(path, x)
    if "class_names" in arrays:
        names = [str(n) for n in np.atleast_1d(arrays["class_names"])]
    else:  # classes 0..max(y); a negative label is refused below
        names = _class_names_for(y) if y.size and np.issubdtype(y.dtype, np.integer) and y.max() >= 0 else []
    check_labels(path, y, len(x), names)
    check_class_names(names, f"{path}: class_names")
    return ImageSet(convert_array(x, opts), y.astype(np.int64), names)


def load_folder_set(root: Path, opts: LoadOptions) -> ImageSet:
    """An ImageFolder tree `<root>/<class>/<image>`."""
    items = list_image_folder(root)
    class_names = sorted({c for _, c in items})
    xs, ys, skipped = [], [], []
    for rel, cls in items:
        try:
            xs.append(read_image(root / rel, opts.image_size, opts.channels, opts.max_image_pixels))
            ys.append(class_names.index(cls))
        except DataError:
            if opts.on_bad_image != "skip":
                raise
            skipped.append(str(root / rel))
    y = np.asarray(ys, dtype=np.int64)
    empty = [name for k, name in enumerate(class_names) if not (y == k).any()]
    if empty:
        raise DataError(f"{root / empty[0]}: class folder has no readable images "
                        f"({len(skipped)} bad file(s) skipped with data.on_bad_image=skip)")
    return ImageSet(np.stack(xs), y, class_names, skipped)


def load_dataset(spec: str, opts: LoadOptions) -> dict[str, Optional[ImageSet]]:
    """`{"train": ImageSet, "test": ImageSet | None}` for `digits`, an `.npz` or an ImageFolder root.

    An ImageFolder root with `train/` and `test/` subfolders gives both splits.
    """
    if spec in EMBEDDED:
        return {"train": load_digits_set(opts), "test": None}
    path = Path(spec)
    if not path.exists():
        raise DataError(f"{spec}: dataset not found (expected 'digits', an .npz file or an ImageFolder folder)")
    if path.is_file():
        if path.suffix != ".npz":
            raise DataError(f"{spec}: unsupported dataset file (expected .npz)")
        return {"train": load_npz_set(path, opts), "test": None}
    if (path / "train").is_dir() and (path / "test").is_dir():
        train, test = load_folder_set(path / "train", opts), load_folder_set(path / "test", opts)
        if test.class_names != train.class_names:
            raise DataError(f"{path}: test/ classes {test.class_names} differ from train/ classes {train.class_names}")
        return {"train": train, "test": test}
    return {"train": load_folder_set(path, opts), "test": None}


# ---------------------------------------------------------------- selection

ClassRef = Union[int, str]


def resolve_classes(ds: ImageSet, refs: Optional[Sequence[ClassRef]], key: str) -> list[int]:
    """Class indices for `refs` (indices or names); all classes when None."""
    if refs is None:
        return list(range(len(ds.class_names)))
    out = []
    for r in refs:
        if isinstance(r, str) and r in ds.class_names:
            out.append(ds.class_names.index(r))
        elif isinstance(r, int) and 0 <= r < len(ds.class_names):
            out.append(r)
        else:
            raise DataError(f"{key}: unknown class {r!r}; the dataset has {ds.class_names}")
    if len(set(out)) < 2:
        raise DataError(f"{key}: need at least 2 distinct classes, got {list(refs)}")
    return out


def select_classes(ds: ImageSet, classes: list[int]) -> ImageSet:
    """Keep only `classes`, relabelled 0..len(classes)-1 in the given order."""
    remap = np.full(len(ds.class_names), -1, dtype=np.int64)
    remap[classes] = np.arange(len(classes))
    keep = np.flatnonzero(remap[ds.y] >= 0)
    return ImageSet(ds.x[keep], remap[ds.y[keep]], [ds.class_names[c] for c in classes], list(ds.skipped))


def sample_shots(ds: ImageSet, shots: int, rng: np.random.Generator, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(shot indices, remaining indices): `shots` random images per class."""
    picked = []
    for k, cls in enumerate(ds.class_names):
        idx = np.flatnonzero(ds.y == k)
        if len(idx) < shots:
            raise DataError(f"{name}: class {cls!r} has {len(idx)} image(s), fewer than data.shots={shots}")
        picked.append(rng.choice(idx, size=shots, replace=False))
    shot_idx = np.sort(np.concatenate(picked))
    rest = np.setdiff1d(np.arange(len(ds)), shot_idx)
    return shot_idx, rest


# ---------------------------------------------------------------- prepared files

def save_prepared(path: Path, ds: ImageSet) -> None:
    """Write an ImageSet as an `.npz` of plain arrays (no pickle)."""
    with open(path, "wb") as f:
        np.savez_compressed(f, x=ds.x, y=ds.y, class_names=np.asarray(ds.class_names, dtype=str))


def load_prepared(path: str | Path) -> ImageSet:
    """Read an `.npz` written by `save_prepared`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prepared data not found (run the prepare stage first)")
    arrays = read_npz(path)
    missing = [k for k in ("x", "y", "class_names") if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing array(s) {missing}; not written by the prepare stage (run it again)")
    return ImageSet(arrays["x"], arrays["y"].astype(np.int64), [str(n) for n in arrays["class_names"]])


def to_float(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [-1, 1] (the GAN's and the classifier's input range)."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x, copy=True))
    return t.float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float images in [-1, 1] -> uint8 numpy (N, C, H, W)."""
    return x.detach().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def load_manifest_set(root: Path, opts: LoadOptions) -> ImageSet:
    """An ImageFolder tree written by ganaug, read through its manifest (paths kept inside `root`)."""
    df = read_manifest(root)
    where = root / MANIFEST
    if "hard_view" in df.columns:  # a dataset ganaug published: its hard-label view (the class folders)
        df = df[df["hard_view"].astype(bool)].reset_index(drop=True)
    if df.empty:
        raise DataError(f"{where}: no rows")
    if not pd.api.types.is_integer_dtype(df["label"]) or df["label"].isna().any():
        raise DataError(f"{where}: column 'label' must hold integers, got {df['label'].dtype}")
    bad_path = df["path"].map(lambda v: not isinstance(v, str) or not v)
    if bad_path.any():
        raise DataError(f"{where}: row {int(bad_path.to_numpy().argmax())}: 'path' must be a non-empty relative path")
    names = manifest_classes(df, where)
    paths = [safe_join(root, rel) for rel in df["path"]]  # every path checked before any image is read
    x = [read_image(p, opts.image_size, opts.channels, opts.max_image_pixels) for p in paths]
    return ImageSet(np.stack(x), df["label"].to_numpy(np.int64), names)


def load_training_set(paths: Sequence[Path], image_size: int, channels: int) -> ImageSet:
    """The first path (a prepared `.npz`, or an ImageFolder tree with `manifest.parquet`), followed by the
    images of every further tree written by ganaug (e.g. `data/synthetic`), labelled by the first's classes."""
    first, *more = [Path(p) for p in paths]
    out = load_prepared(first) if first.suffix == ".npz" else load_manifest_set(first, LoadOptions(image_size, channels))
    for root in more:
        extra = load_synthetic(root, out)
        if extra is not None:
            out = ImageSet(np.concatenate([out.x, extra.x]), np.concatenate([out.y, extra.y]), list(out.class_names))
    return out


def load_synthetic(root: Path, like: ImageSet) -> Optional[ImageSet]:
    """The synthetic set labelled by `like`'s classes (a filter may have left some empty); None when empty."""
    df = read_manifest(root)
    if df.empty:
        return None
    unknown = sorted(set(df["class_name"]) - set(like.class_names))
    if unknown:
        raise DataError(f"{root / MANIFEST}: classes {unknown} are not target classes {like.class_names}")
    _, c, s, _ = like.x.shape
    x = np.stack([read_image(safe_join(root, rel), s, c, s * s) for rel in df["path"]])
    y = np.array([like.class_names.index(n) for n in df["class_name"]], dtype=np.int64)
    return ImageSet(x, y, list(like.class_names))
