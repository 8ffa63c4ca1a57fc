"""Reading and writing ImageFolder trees (`<root>/<class>/<file>.png`) and their manifests.

Every image read goes through `read_image`, which converts any mode (gray, RGB,
RGBA, palette, 16-bit) to the requested size and channel count and refuses
corrupt files and decompression bombs with a `DataError` naming the file.
Manifest paths are resolved with `safe_join`, which refuses paths that leave
their root.

Class names are user data (an `.npz`'s `class_names`, a manifest's column): they
never become paths as they are. `class_folders` maps them, before anything is
written, to one safe folder name each, `<k>_<slug>` with the label k zero-padded,
so that every reader that numbers classes by sorted folder name (torchvision's
`ImageFolder`, Hugging Face's `imagefolder`) gives the manifest's labels.
"""
from __future__ import annotations

import contextlib
import re
import unicodedata
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from ganaug.config.errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
MANIFEST = "manifest.parquet"
MANIFEST_COLUMNS = ["path", "label", "class_name", "origin", "generator_sha256", "seed"]  # data/synthetic
# data/augmented (stage concat): every image with the teacher's probabilities; label and class_name on the rows
# of the hard-label view (hard_view, the class folders) only
PUBLISHED_COLUMNS = ["path", "label", "class_name", "origin", "probs", "hard_view", "teacher_label", "asked_label",
                     "generator_sha256", "seed", "source_index", "parent_shot", "strength"]
MANIFEST_SCHEMA = "ganaug-manifest/2"  # in manifest.parquet's key-value metadata and the datasheet
HF_METADATA = "metadata.jsonl"  # Hugging Face `imagefolder` metadata: file_name + the manifest's other columns
SLUG_MAX = 48  # characters of a class name kept in its folder name
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")  # everything else (separators, dots, spaces, controls, non-ASCII) -> "_"


def check_class_names(names: list[str], where: str) -> None:
    """DataError naming `where` when two classes share a name (labels would be ambiguous)."""
    seen: dict[str, int] = {}
    for k, name in enumerate(names):
        if name in seen:
            raise DataError(f"{where}: classes {seen[name]} and {k} have the same name {name!r}; class names must be unique")
        seen[name] = k


def class_slug(name: str) -> str:
    """The readable part of a class folder name: ASCII letters, digits, `_` and `-` only, at most SLUG_MAX."""
    ascii_name = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode("ascii")
    return _UNSAFE.sub("_", ascii_name).strip("_")[:SLUG_MAX].rstrip("_") or "class"


def class_folders(class_names: list[str]) -> list[str]:
    """One folder name per class, in label order: `<k>_<slug>`, k zero-padded to the same width.

    Always a single, non-hidden path component, unique (the label makes it so) and
    sorting in label order. Duplicate names are refused (`check_class_names`).
    """
    check_class_names(list(class_names), "class names")
    width = len(str(max(len(class_names) - 1, 0)))
    return [f"{k:0{width}d}_{class_slug(name)}" for k, name in enumerate(class_names)]


def safe_join(root: Path, rel: str) -> Path:
    """`root / rel`, refusing absolute paths, `..` and symlinks that leave `root`."""
    if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise DataError(f"{root}: manifest path {rel!r} leaves the dataset root")
    full = (root / rel).resolve()
    if not full.is_relative_to(root.resolve()):
        raise DataError(f"{root}: manifest path {rel!r} resolves outside the dataset root ({full})")
    return full


def list_image_folder(root: Path) -> list[tuple[str, str]]:
    """(path relative to root, class name) for every image, classes sorted by name."""
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders (expected <root>/<class>/<image>)")
    if len(classes) < 2:
        raise DataError(f"{root}: only one class folder ({classes[0]!r}); a classifier needs at least 2")
    items = []
    for name in classes:
        files = sorted(p for p in (root / name).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise DataError(f"{root / name}: class folder has no images ({', '.join(IMAGE_EXTS)})")
        items += [(str(p.relative_to(root)), name) for p in files]
    return items


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float gray images scaled to 8-bit gray; palette/other modes to RGB(A)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        return Image.fromarray(np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        return img.convert("RGBA")
    return img


def _to_channels(img: Image.Image, channels: int) -> Image.Image:
    """Flatten alpha onto black, then convert to L (1 channel) or RGB (3)."""
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("L" if channels == 1 else "RGB")


@contextlib.contextmanager
def _pixel_limit(max_pixels: int) -> Iterator[None]:
    """PIL's decompression-bomb check with data.max_image_pixels instead of PIL's global default."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own check names the limit
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def read_image(path: Path, image_size: int, channels: int, max_pixels: int) -> np.ndarray:
    """Load one image as uint8 (C, S, S); DataError for missing, corrupt, empty or oversized files."""
    try:
        size = path.stat().st_size
    except OSError as exc:  # missing, a dangling symlink, no permission
        raise DataError(f"{path}: cannot read image ({exc.strerror or exc.__class__.__name__})") from None
    if size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    try:
        with _pixel_limit(max_pixels), Image.open(path) as img:  # PIL refuses > 2 * max_pixels on its own
            w, h = img.size
            if w * h > max_pixels:
                raise DataError(f"{path}: {w}x{h} image exceeds data.max_image_pixels={max_pixels}; refused")
            img.load()
            img = _to_channels(_to_8bit(img), channels)
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: refused as a decompression bomb (over data.max_image_pixels={max_pixels}: {exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc.__class__.__name__}: {exc})") from None
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=None)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, S, S)


def write_pngs(root: Path, x: np.ndarray, y: np.ndarray, class_names: list[str], stem: str) -> list[str]:
    """Write uint8 (N, C, H, W) images as `<root>/<class folder>/<stem>_<i>.png`; return relative paths."""
    folders = class_folders(class_names)  # checked before anything is written
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (img, label) in enumerate(zip(x, y)):
        rel = f"{folders[int(label)]}/{stem}_{i:06d}.png"
        (root / rel).parent.mkdir(exist_ok=True)
        arr = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
        Image.fromarray(np.ascontiguousarray(arr)).save(root / rel, optimize=False, compress_level=1)
        paths.append(rel)
    return paths


def read_manifest(root: Path) -> pd.DataFrame:
    """The manifest of an ImageFolder tree written by ganaug, checked for its columns."""
    path = root / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DataError(f"{path}: not a readable parquet file ({exc.__class__.__name__}: {exc})") from None
    missing = [c for c in ("path", "label", "class_name", "origin") if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}")
    return df


def write_hf_metadata(root: Path, df: pd.DataFrame) -> None:
    """`metadata.jsonl` for `datasets.load_dataset("imagefolder", data_dir=root)`: the manifest's rows with
    `path` named `file_name`, so label, class_name, origin and seed come along as columns."""
    meta = df.rename(columns={"path": "file_name"})
    meta.to_json(root / HF_METADATA, orient="records", lines=True, force_ascii=False)


def manifest_classes(df: pd.DataFrame, where: str | Path) -> list[str]:
    """The class names of a manifest in label order; DataError unless labels are 0..K-1, one distinct name each."""
    first = df.drop_duplicates("label").sort_values("label")
    if first["label"].tolist() != list(range(len(first))) or df.groupby("label")["class_name"].nunique().max() != 1:
        raise DataError(f"{where}: labels must be 0..K-1 with one class_name each")
    names = [str(n) for n in first["class_name"]]
    check_class_names(names, f"{where}: class_name")
    return names


def manifest_frame(paths: list[str], labels: np.ndarray, class_names: list[str], sha: str, seed: int) -> pd.DataFrame:
    """The synthetic manifest, columns exactly MANIFEST_COLUMNS."""
    df = pd.DataFrame({
        "path": pd.Series(paths, dtype="str"),
        "label": labels.astype("int64"),
        "class_name": pd.Series([class_names[k] for k in labels], dtype="str"),
        "origin": pd.Series(["synthetic"] * len(paths), dtype="str"),
        "generator_sha256": pd.Series([sha] * len(paths), dtype="string"),
        "seed": np.full(len(paths), seed, dtype="int64"),
    })
    return df[MANIFEST_COLUMNS]
