"""Stage `concat`: real target shots + synthetic images -> the published dataset `data/augmented/`.

The last stage of the pipeline, so that the dataset carries its own evaluation.
`data/augmented/` holds:

- an ImageFolder tree `<folder>/<real|syn>_<i>.png`, one folder per class named
  `<label>_<slug>` (`ganaug/io/imagefolder.py` `class_folders`): safe whatever the
  class names are, and sorting in label order, so torchvision's `ImageFolder`,
  Hugging Face's `imagefolder` and the manifest agree on every label;
- `manifest.parquet`, one row per image: path, label, class_name (the original
  name), origin (real | synthetic), and for synthetic rows the generator
  checkpoint's sha256 and the synthesis seed;
- `metadata.jsonl`, the same rows for `datasets.load_dataset("imagefolder", data_dir=...)`;
- `datasheet.json` / `datasheet.md`: what made it (all params, the git revision,
  inputs with their sha256), what is in it (per class and origin) and how it was
  judged (synthesis filter and copy check, GAN metrics, the evaluation verdict).

All of it is written to a temporary folder and swapped in at once.
Other teams `dvc import` it (or `dvc artifacts get ... augmented-dataset`).
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import yaml

from ganaug.config.errors import DataError, exit_on_user_error
from ganaug.config.params import load_params
from ganaug.io.atomic import atomic_dir, file_sha256
from ganaug.io.data import ImageSet, load_prepared
from ganaug.io.datasheet import build_datasheet, render_datasheet
from ganaug.io.imagefolder import (MANIFEST, MANIFEST_COLUMNS, class_folders, read_manifest, safe_join, write_hf_metadata,
                                   write_pngs)

SYN_REPORT = "report.json"  # written by synthesize inside data/synthetic


def _real_rows(root: Path, real: ImageSet) -> pd.DataFrame:
    paths = write_pngs(root, real.x, real.y, real.class_names, stem="real")
    return pd.DataFrame({
        "path": paths, "label": real.y.astype("int64"),
        "class_name": [real.class_names[k] for k in real.y], "origin": "real",
        "generator_sha256": pd.Series([None] * len(paths), dtype="string"),
        "seed": pd.Series([None] * len(paths), dtype="Int64"),
    })


def _copy_synthetic(root: Path, synthetic_dir: Path, class_names: list[str], folders: list[str]) -> pd.DataFrame:
    """The synthetic images, each into its class's folder (by class name, not by the path it had)."""
    syn = read_manifest(synthetic_dir)
    unknown = sorted(set(syn["class_name"]) - set(class_names))
    if unknown:
        raise DataError(f"{synthetic_dir / MANIFEST}: classes {unknown} are not target classes {class_names}")
    labels = [class_names.index(c) for c in syn["class_name"]]
    sources = [safe_join(synthetic_dir, rel) for rel in syn["path"]]  # every path checked before any copy
    paths = [f"{folders[k]}/{src.name}" for k, src in zip(labels, sources)]
    if len(set(paths)) != len(paths):
        raise DataError(f"{synthetic_dir / MANIFEST}: two rows would be written to the same file")
    for src, rel in zip(sources, paths):
        shutil.copyfile(src, root / rel)  # the class folder exists: write_pngs made one per class
    syn = syn.assign(path=paths, label=labels, origin="synthetic")
    return syn.astype({"label": "int64", "generator_sha256": "string", "seed": "Int64"})


def concat(real: ImageSet, synthetic_dir: Path, out_dir: Path, made_by: Optional[dict[str, Any]] = None,
           gan_metrics: Optional[dict] = None, evaluation: Optional[dict] = None) -> pd.DataFrame:
    """Write the published dataset (images, manifest, HF metadata, datasheet) to `out_dir`; return the manifest."""
    folders = class_folders(real.class_names)  # refuses duplicate names before anything is written
    report = synthetic_dir / SYN_REPORT
    synthesis = json.loads(report.read_text()) if report.is_file() else None
    with atomic_dir(out_dir) as tmp:
        for folder in folders:  # every class has its folder, even one with no image of some origin
            (tmp / folder).mkdir()
        df = pd.concat([_real_rows(tmp, real), _copy_synthetic(tmp, synthetic_dir, real.class_names, folders)],
                       ignore_index=True)[MANIFEST_COLUMNS]
        df.to_parquet(tmp / MANIFEST, index=False)
        write_hf_metadata(tmp, df)
        sheet = build_datasheet(df, real.class_names, folders, made_by or {}, synthesis, gan_metrics, evaluation)
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
        "source": {"spec": params.data.source, "sha256": file_sha256(prepared / "source.npz")},
        "target_train": {"spec": params.data.target, "sha256": file_sha256(target / "target_train.npz")},
        "target_test": {"spec": params.data.target_test or params.data.target,
                        "sha256": file_sha256(target / "target_test.npz")}}}
    real = load_prepared(target / "target_train.npz")
    df = concat(real, Path("data/synthetic"), Path("data/augmented"), made_by,
                _read_json(Path("metrics/gan.json")), _read_json(Path("metrics/eval.json")))
    n = df["origin"].value_counts().to_dict()
    print(f"concat: {n.get('real', 0)} real + {n.get('synthetic', 0)} synthetic images, with its datasheet "
          "-> data/augmented")


if __name__ == "__main__":
    main()
