"""Stage `concat`: real target shots + synthetic images -> the augmented dataset.

`data/augmented/` is a torchvision `ImageFolder` tree (`<class>/<file>.png`)
plus `manifest.parquet` with one row per image: path, label, class_name,
origin (real | synthetic) and, for synthetic rows, the generator checkpoint's
sha256 and the synthesis seed. It is a DVC-tracked output, so other teams can
`dvc import` it and `dvc update` to a new version.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from ganaug.config.errors import DataError, exit_on_user_error
from ganaug.config.params import load_params
from ganaug.io.atomic import atomic_dir
from ganaug.io.data import ImageSet, load_prepared
from ganaug.io.imagefolder import MANIFEST, MANIFEST_COLUMNS, read_manifest, safe_join, write_pngs


def _real_rows(root: Path, real: ImageSet) -> pd.DataFrame:
    paths = write_pngs(root, real.x, real.y, real.class_names, stem="real")
    return pd.DataFrame({
        "path": paths, "label": real.y.astype("int64"),
        "class_name": [real.class_names[k] for k in real.y], "origin": "real",
        "generator_sha256": pd.Series([None] * len(paths), dtype="string"),
        "seed": pd.Series([None] * len(paths), dtype="Int64"),
    })


def _copy_synthetic(root: Path, synthetic_dir: Path, class_names: list[str]) -> pd.DataFrame:
    syn = read_manifest(synthetic_dir)
    unknown = sorted(set(syn["class_name"]) - set(class_names))
    if unknown:
        raise DataError(f"{synthetic_dir / MANIFEST}: classes {unknown} are not target classes {class_names}")
    for rel in syn["path"]:
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(safe_join(synthetic_dir, rel), dst)
    syn = syn.assign(label=[class_names.index(c) for c in syn["class_name"]], origin="synthetic")
    return syn.astype({"label": "int64", "generator_sha256": "string", "seed": "Int64"})


def concat(real: ImageSet, synthetic_dir: Path, out_dir: Path) -> pd.DataFrame:
    """Write the augmented ImageFolder tree and its manifest; return the manifest."""
    with atomic_dir(out_dir) as tmp:
        df = pd.concat([_real_rows(tmp, real), _copy_synthetic(tmp, synthetic_dir, real.class_names)], ignore_index=True)
        df = df[MANIFEST_COLUMNS]
        df.to_parquet(tmp / MANIFEST, index=False)
    return df


@exit_on_user_error
def main() -> None:
    load_params()  # concat has no params of its own, but a broken params.yaml stops every stage first
    real = load_prepared("data/prepared/target_train.npz")
    df = concat(real, Path("data/synthetic"), Path("data/augmented"))
    n = df["origin"].value_counts().to_dict()
    print(f"concat: {n.get('real', 0)} real + {n.get('synthetic', 0)} synthetic images -> data/augmented")


if __name__ == "__main__":
    main()
