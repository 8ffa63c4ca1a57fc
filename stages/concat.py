"""Stage `concat`: the published dataset `data/augmented/`: real shots, synthetic and relabelled source
images, each with the teacher's probabilities that fine-tuning used.

The last stage of the pipeline, so that the dataset carries its own evaluation.
What it publishes is fixed by `publish:` params, not by the run's recommendation:
the real shots and the second stream of the `gan_source` variant (the GAN's
images and, with `publish.source_images`, the relabelled source images), with the
probabilities the `distill` stage wrote to `data/streams/gan_source/`
(`ganaug/io/stream_labels.py`), never recomputed. `data/augmented/` holds:

- the hard-label view: one folder per class, `<label>_<slug>` (`ganaug/io/imagefolder.py`
  `class_folders`, sorting in label order), holding the rows of `publish.hard_view`
  (`ganaug/judge/hard_view.py`; by default the real shots alone), so torchvision's
  `ImageFolder` and Hugging Face's `imagefolder` read only images whose folder is their class;
- every other image at the top level (`syn_<i>.png`, `src_<i>.png`), where neither
  reader takes it for a member of a class;
- `manifest.parquet` (schema `MANIFEST_SCHEMA`), one row per image: `PUBLISHED_COLUMNS` (for the images of a
  shot-conditioned generator kind, `parent_shot`, the real row i, i.e. `real_<i>.png`, they vary, and `strength`);
  `probs` is the teacher's distribution over the target classes in label order
  (one-hot for real shots) at the temperature the datasheet states; `label` and
  `class_name` are set on the rows of the hard-label view only;
- `metadata.jsonl`, the same rows for `datasets.load_dataset("imagefolder", data_dir=...)`;
- `datasheet.json` / `datasheet.md`: what made it (all params, the git revision,
  inputs with their sha256, the teacher's files and temperature, where the source
  images come from), what is in it (per class and origin, the hard-label rule) and
  how it was judged (synthesis filter and copy check, GAN metrics, the evaluation verdict).

All of it is written to a temporary folder and swapped in at once. Other teams
`dvc import` it (or `dvc artifacts get ... augmented-dataset`) and read it with
`ganaug.published.load` (docs/downstream.md).
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

from ganaug.config.errors import DataError, exit_on_user_error
from ganaug.config.params import PublishParams, load_params
from ganaug.io.atomic import atomic_dir, file_sha256
from ganaug.io.data import ImageSet, load_prepared
from ganaug.io.datasheet import build_datasheet, render_datasheet
from ganaug.io.imagefolder import (MANIFEST, MANIFEST_SCHEMA, PUBLISHED_COLUMNS, class_folders, read_manifest,
                                   safe_join, write_hf_metadata, write_pngs)
from ganaug.io.stream_labels import read_stream_labels
from ganaug.judge.hard_view import hard_view

SYN_REPORT = "report.json"  # written by synthesize inside data/synthetic


def _rows(origin: str, paths: list[str], probs: np.ndarray, asked: np.ndarray, **extra) -> pd.DataFrame:
    return pd.DataFrame({"path": paths, "origin": origin, "probs": list(probs.astype(np.float32)),
                         "asked_label": pd.array(np.where(asked >= 0, asked, -1), dtype="Int64"), **extra})


def _real_rows(real: ImageSet) -> pd.DataFrame:
    probs = np.eye(len(real.class_names), dtype=np.float32)[real.y]  # (N, K) one-hot
    return _rows("real", [""] * len(real), probs, real.y.astype(np.int64))


def _synthetic_rows(synthetic_dir: Path, stream: pd.DataFrame, probs: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """The stream's synthetic rows, joined to data/synthetic's manifest by path (the image, its generator, seed)."""
    syn = read_manifest(synthetic_dir).set_index("path")
    sel = (stream["origin"] == "synthetic").to_numpy()
    refs = stream.loc[sel, "ref"].tolist()
    missing = sorted(set(refs) - set(syn.index))
    if missing or len(refs) != len(syn):
        raise DataError(f"{synthetic_dir / MANIFEST}: the stream labels name {len(refs)} synthetic images, the manifest "
                        f"holds {len(syn)} ({len(missing)} not found, e.g. {missing[:1]}); run distill again")
    unknown = sorted(set(syn["class_name"]) - set(class_names))
    if unknown:
        raise DataError(f"{synthetic_dir / MANIFEST}: classes {unknown} are not target classes {class_names}")
    for rel in refs:  # every path checked before any image is written
        safe_join(synthetic_dir, rel)
    asked = np.array([class_names.index(c) for c in syn.loc[refs, "class_name"]], dtype=np.int64)
    conditioned = {c: syn.loc[refs, c].to_numpy() for c in ("parent_shot", "strength") if c in syn.columns}
    return _rows("synthetic", refs, probs[sel], asked,
                 generator_sha256=pd.array(syn.loc[refs, "generator_sha256"], dtype="string"),
                 seed=pd.array(syn.loc[refs, "seed"], dtype="Int64"), **conditioned)


def _source_rows(stream: pd.DataFrame, probs: np.ndarray) -> pd.DataFrame:
    sel = (stream["origin"] == "source").to_numpy()
    index = stream.loc[sel, "ref"].astype("int64").to_numpy()
    return _rows("source", [""] * len(index), probs[sel], np.full(len(index), -1),
                 source_index=pd.array(index, dtype="Int64"))


def _write_images(tmp: Path, df: pd.DataFrame, real: ImageSet, synthetic_dir: Path, source: Optional[ImageSet],
                  folders: list[str]) -> list[str]:
    """Write every row's image: hard-view rows into their class folder, the others at the top level."""
    real_paths = iter(write_pngs(tmp, real.x, real.y, real.class_names, stem="real"))  # real rows come first
    paths = []
    for row in df.itertuples():
        if row.origin == "real":
            paths.append(next(real_paths))
            continue
        name = Path(row.path).name if row.origin == "synthetic" else f"src_{int(row.source_index):06d}.png"
        rel = f"{folders[int(row.label)]}/{name}" if row.hard_view else name
        if row.origin == "synthetic":
            shutil.copyfile(safe_join(synthetic_dir, row.path), tmp / rel)
        else:
            write_pngs_one(tmp / rel, source.x[int(row.source_index)])
        paths.append(rel)
    if len(set(paths)) != len(paths):
        raise DataError(f"{synthetic_dir / MANIFEST}: two published rows would be written to the same file")
    return paths


def write_pngs_one(path: Path, img: np.ndarray) -> None:
    """One uint8 (C, H, W) image as a PNG at `path`."""
    arr = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
    Image.fromarray(np.ascontiguousarray(arr)).save(path, optimize=False, compress_level=1)


def published_rows(real: ImageSet, synthetic_dir: Path, stream: pd.DataFrame, publish: PublishParams) -> pd.DataFrame:
    """Every published row before its image is written: origin, probs, asked class, hard_view, label, class_name."""
    probs = stream.attrs["probs"]
    if len(stream) and probs.shape[1] != len(real.class_names):
        raise DataError(f"stream labels: probabilities over {probs.shape[1]} classes, the target has {len(real.class_names)}")
    parts = [_real_rows(real), _synthetic_rows(synthetic_dir, stream, probs, real.class_names)]
    if publish.source_images:
        parts.append(_source_rows(stream, probs))
    df = pd.concat(parts, ignore_index=True)
    all_probs = np.stack(df["probs"].to_numpy()) if len(df) else np.zeros((0, len(real.class_names)))
    asked = df["asked_label"].fillna(-1).to_numpy(np.int64)
    counts = np.bincount(real.y, minlength=len(real.class_names))
    df["hard_view"] = hard_view(df["origin"].to_numpy(), asked, all_probs, counts, publish)
    df["teacher_label"] = all_probs.argmax(1).astype(np.int64)
    df["label"] = pd.array([int(k) if v else None for k, v in zip(asked, df["hard_view"])], dtype="Int64")
    df["class_name"] = pd.array([real.class_names[int(k)] if v else None
                                 for k, v in zip(asked, df["hard_view"])], dtype="string")
    for col, dtype in (("generator_sha256", "string"), ("seed", "Int64"), ("source_index", "Int64"),
                       ("parent_shot", "Int64"), ("strength", "float64")):
        df[col] = df[col].astype(dtype) if col in df else pd.array([None] * len(df), dtype=dtype)
    return df


def write_manifest(df: pd.DataFrame, path: Path) -> None:
    """manifest.parquet with the schema version in the file's key-value metadata."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = {**(table.schema.metadata or {}), b"ganaug_manifest_schema": MANIFEST_SCHEMA.encode()}
    pq.write_table(table.replace_schema_metadata(meta), path)


def concat(real: ImageSet, synthetic_dir: Path, stream_dir: Path, out_dir: Path, *, source: Optional[ImageSet] = None,
           publish: PublishParams = PublishParams(), made_by: Optional[dict[str, Any]] = None,
           gan_metrics: Optional[dict] = None, evaluation: Optional[dict] = None) -> pd.DataFrame:
    """Write the published dataset (images, manifest, HF metadata, datasheet) to `out_dir`; return the manifest.

    `stream_dir`: the `gan_source` variant's stream labels; `source`: the prepared source set their `source`
    rows index (needed when `publish.source_images`)."""
    folders = class_folders(real.class_names)  # refuses duplicate names before anything is written
    stream, teacher = read_stream_labels(stream_dir)
    if publish.source_images and source is None and (stream["origin"] == "source").any():
        raise DataError(f"{stream_dir}: the stream holds source images; pass the source set or set publish.source_images false")
    report = synthetic_dir / SYN_REPORT
    synthesis = json.loads(report.read_text()) if report.is_file() else None
    df = published_rows(real, synthetic_dir, stream, publish)
    with atomic_dir(out_dir) as tmp:
        for folder in folders:  # every class has its folder, even one with no image of some origin
            (tmp / folder).mkdir()
        df["path"] = _write_images(tmp, df, real, synthetic_dir, source, folders)
        df = df[PUBLISHED_COLUMNS]
        write_manifest(df, tmp / MANIFEST)
        write_hf_metadata(tmp, df)
        sheet = build_datasheet(df, real.class_names, folders, made_by or {}, synthesis, gan_metrics, evaluation,
                                teacher=teacher, publish=publish.model_dump())
        (tmp / "datasheet.json").write_text(json.dumps(sheet, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        (tmp / "datasheet.md").write_text(render_datasheet(sheet))
    return df


def git_revision() -> Optional[str]:
    """HEAD's commit of the project, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _read_json(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.is_file() else None


@exit_on_user_error
def main() -> None:
    params = load_params()  # validated first: a broken params.yaml stops every stage
    raw = yaml.safe_load(Path("params.yaml").read_text())
    prepared, target = Path("data/prepared"), Path("data/restored")  # the target as the pipeline saw it (stage restore)
    made_by = {"params": raw, "git_revision": git_revision(), "inputs": {
        "source": {"spec": params.data.source, "classes": params.data.source_classes,
                   "sha256": file_sha256(prepared / "source.npz")},
        "target_train": {"spec": params.data.target, "sha256": file_sha256(target / "target_train.npz")},
        "target_test": {"spec": params.data.target_test or params.data.target,
                        "sha256": file_sha256(target / "target_test.npz")}}}
    real = load_prepared(target / "target_train.npz")
    source = load_prepared(prepared / "source.npz") if params.publish.source_images else None
    df = concat(real, Path("data/synthetic"), Path("data/streams/gan_source"), Path("data/augmented"), source=source,
                publish=params.publish, made_by=made_by, gan_metrics=_read_json(Path("metrics/gan.json")),
                evaluation=_read_json(Path("metrics/eval.json")))
    n = df["origin"].value_counts().to_dict()
    print(f"concat: {n.get('real', 0)} real + {n.get('synthetic', 0)} synthetic + {n.get('source', 0)} source images "
          f"with the teacher's probabilities, {int(df['hard_view'].sum())} in the class folders -> data/augmented")


if __name__ == "__main__":
    main()
