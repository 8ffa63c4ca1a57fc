"""Stage `prepare`: build the source set and the target set (train shots + test).

Scenarios, all from `data:` in params.yaml:
- novel classes: source and target are the same dataset with different classes
  (default: digits 0-4 -> 5-9);
- domain transfer: source and target are different datasets (MNIST -> USPS);
- plain low-data: the same dataset and classes on both sides.
When source and target are the same dataset, the source never contains an
image used as a target shot or test image.

Outputs (`data/prepared/`): source.npz, target_train.npz, target_test.npz and
manifest.json (datasets, classes, counts, skipped files) and classes.json (the
class names alone: a dependency that stays the same when only the shot sample changes).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ganaug.config.errors import DataError, exit_on_user_error
from ganaug.config.params import DataParams, load_params
from ganaug.io.atomic import atomic_dir
from ganaug.io.data import ImageSet, LoadOptions, load_dataset, resolve_classes, sample_shots, save_prepared, select_classes


def _test_set(p: DataParams, opts: LoadOptions, target: dict, tgt_classes: list[int], names: list[str]) -> ImageSet | None:
    """The explicit test set (data.target_test or the target's test/ split), or None."""
    if p.target_test:
        test = load_dataset(p.target_test, opts)["train"]
        return select_classes(test, resolve_classes(test, names, "data.target_test classes"))
    if target["test"] is not None:
        return select_classes(target["test"], tgt_classes)
    return None


def split_target(p: DataParams, opts: LoadOptions, target: dict) -> tuple[ImageSet, ImageSet, np.ndarray]:
    """(train shots, test set, indices into target['train'] that the target uses)."""
    full = target["train"]
    tgt_classes = resolve_classes(full, p.target_classes, "data.target_classes")
    tgt_idx = np.flatnonzero(np.isin(full.y, tgt_classes))  # row i of `tgt` is full[tgt_idx[i]]
    tgt = select_classes(full, tgt_classes)
    shot_idx, rest = sample_shots(tgt, p.shots, np.random.default_rng(p.seed), p.target)
    test = _test_set(p, opts, target, tgt_classes, tgt.class_names)
    used = tgt_idx[shot_idx]
    if test is None:
        test = tgt.subset(rest)
        used = tgt_idx
        empty = [n for n, c in test.counts().items() if c == 0]
        if empty:
            raise DataError(f"{p.target}: no test images left for class(es) {empty} after taking data.shots={p.shots}")
    return tgt.subset(shot_idx), test, used


def build_source(p: DataParams, source: dict, exclude: np.ndarray) -> ImageSet:
    """The source set: the source classes, minus images the target uses (same dataset only)."""
    full = source["train"]
    classes = resolve_classes(full, p.source_classes, "data.source_classes")
    keep = np.setdiff1d(np.flatnonzero(np.isin(full.y, classes)), exclude)
    src = select_classes(full.subset(keep), classes)
    if len(src) == 0:
        raise DataError(f"{p.source}: the source set is empty")
    return src


def _same_dataset(a: str, b: str) -> bool:
    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


def skipped_files(*sets: dict | ImageSet) -> list[str]:
    """Every file left out with data.on_bad_image=skip, over all loaded sets and splits, sorted."""
    found = set()
    for s in sets:
        for ds in (s.values() if isinstance(s, dict) else [s]):
            if ds is not None:
                found.update(ds.skipped)
    return sorted(found)


def prepare(p: DataParams, out_dir: Path) -> dict:
    """Load, convert and split the data; write the prepared sets to `out_dir`; return the manifest."""
    opts = LoadOptions(p.image_size, p.channels, p.on_bad_image, p.max_image_pixels)
    target = load_dataset(p.target, opts)
    same = _same_dataset(p.source, p.target)
    source = target if same else load_dataset(p.source, opts)
    train, test, used = split_target(p, opts, target)
    src = build_source(p, source, used if same else np.empty(0, dtype=np.int64))
    skipped = skipped_files(target, source, test)
    manifest = {
        "source": p.source, "target": p.target, "target_test": p.target_test,
        "scenario": "same dataset" if same else "domain transfer",
        "image_size": p.image_size, "channels": p.channels, "shots": p.shots, "seed": p.seed,
        "classes": {"source": src.class_names, "target": train.class_names},
        "counts": {"source": src.counts(), "target_train": train.counts(), "target_test": test.counts()},
        "skipped_files": skipped,
    }
    with atomic_dir(out_dir) as tmp:
        save_prepared(tmp / "source.npz", src)
        save_prepared(tmp / "target_train.npz", train)
        save_prepared(tmp / "target_test.npz", test)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        (tmp / "classes.json").write_text(json.dumps(manifest["classes"], indent=2) + "\n")  # the shot sample aside
    return manifest


@exit_on_user_error
def main() -> None:
    p = load_params().data
    m = prepare(p, Path("data/prepared"))
    n = {k: sum(v.values()) for k, v in m["counts"].items()}
    print(f"prepare: source {n['source']} images ({len(m['classes']['source'])} classes), "
          f"target {n['target_train']} train / {n['target_test']} test ({len(m['classes']['target'])} classes)"
          + (f", {len(m['skipped_files'])} bad files skipped" if m["skipped_files"] else ""))


if __name__ == "__main__":
    main()
