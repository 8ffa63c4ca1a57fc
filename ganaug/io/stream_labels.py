"""The second stream's labels as fine-tuning used them, written by the `distill` stage that computed them.

`data/streams/<variant>/` (one folder per distill variant) holds

- `labels.parquet`, one row per stream image, in stream order: `origin` (`synthetic` | `source`), `ref`
  (a synthetic image's path in `data/synthetic`'s manifest, or a source image's row in
  `data/prepared/source.npz`), `hard` (the class asked of the generator; -1 for source images) and
  `probs` (the teacher's probabilities over the target classes at the temperature, in label order);
- `teacher.json`: the temperature and every teacher file (its variant, seed and sha256).

The `concat` stage publishes these probabilities as they are: nothing is recomputed after fine-tuning.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ganaug.config.errors import DataError

LABELS, TEACHER = "labels.parquet", "teacher.json"
COLUMNS = ["origin", "ref", "hard", "probs"]
ORIGINS = ("synthetic", "source")


def stream_frame(origin: list[str], ref: list[str], hard: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """The rows of `labels.parquet`: `probs` (N, K) float becomes one list of K float32 per row."""
    if not (len(origin) == len(ref) == len(hard) == len(probs)):
        raise ValueError("origin, ref, hard and probs must have one entry per stream image")
    return pd.DataFrame({"origin": pd.Series(origin, dtype="str"), "ref": pd.Series(ref, dtype="str"),
                         "hard": np.asarray(hard, np.int64),
                         "probs": list(np.asarray(probs, np.float32))})[COLUMNS]


def write_stream_labels(out_dir: Path, df: pd.DataFrame, teacher: dict) -> None:
    """Write `labels.parquet` and `teacher.json` into `out_dir` (an existing folder, e.g. an atomic_dir)."""
    df.to_parquet(Path(out_dir) / LABELS, index=False)
    (Path(out_dir) / TEACHER).write_text(json.dumps(teacher, indent=2, sort_keys=True) + "\n")


def read_stream_labels(root: Path) -> tuple[pd.DataFrame, dict]:
    """(rows with `probs` as an (N, K) float32 array in `df.attrs["probs"]`, teacher.json), checked."""
    root = Path(root)
    try:
        df = pd.read_parquet(root / LABELS)
        teacher = json.loads((root / TEACHER).read_text())
    except FileNotFoundError as exc:
        raise DataError(f"{exc.filename}: not found; run the distill stage") from None
    except Exception as exc:  # pyarrow and json raise several types for a bad file
        raise DataError(f"{root}: unreadable stream labels ({exc.__class__.__name__}: {exc})") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{root / LABELS}: missing column(s) {missing}")
    bad = sorted(set(df["origin"]) - set(ORIGINS))
    if bad:
        raise DataError(f"{root / LABELS}: unknown origin(s) {bad}, expected {list(ORIGINS)}")
    probs = np.stack([np.asarray(p, np.float32) for p in df["probs"]]) if len(df) else np.zeros((0, 0), np.float32)
    if len(df) and (not np.isfinite(probs).all() or not np.allclose(probs.sum(1), 1, atol=1e-3)):
        raise DataError(f"{root / LABELS}: 'probs' must hold probabilities that sum to 1 in every row")
    df.attrs["probs"] = probs
    return df, teacher
