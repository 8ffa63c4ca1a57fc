"""Choosing the `dagan` kind's two knobs (`mismatch`, `diversity`) on the development scenarios.

For each development scenario (MNIST 0-4 -> 5-9, Fashion-MNIST 5-9 -> 0-4), seed
and knob setting, a DAGAN is trained on the source classes exactly as the
`train_dagan` stage trains it (params.yaml's `dagan:` section, the two knobs
replaced) and makes 10 variations of every one of `--shots` target shots per class.
A judge that never saw those variations (logistic regression on the pixels of
the target's training images that are not shots) says:

- **kept**: the fraction of variations judged to be their parent's class (the
  judge's accuracy on the parent shots themselves is printed beside it);
- **distance**: mean |variation - parent| per pixel (0..1), against the mean
  distance between two real images of one class (`real pair`): near 0 means copies.

The rule, fixed before the runs: among the settings whose distance is at least a
quarter of the real-pair distance (not near-copies), the highest mean `kept`
over both scenarios and all seeds wins.

    .venv/bin/python -m bench.dagan_knobs --seeds 0 1 --jobs 2 --raw bench/results/dagan_knobs_dev.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from bench.common import command_line, machine
from bench.uplift import scenario
from ganaug.config.params import load_params
from ganaug.io.data import ImageSet, LoadOptions, load_dataset, resolve_classes, sample_shots, select_classes


from ganaug.nets.generators import load_sampler
from ganaug.nets.sampling import SampleOptions
from ganaug.train.dagan import dagan_checkpoint, train_dagan
from stages.train_dagan import train_config

SETTINGS = [(1.0, 1.0), (0.0, 1.0), (1.0, 0.0), (0.0, 0.0), (1.0, 0.3)]  # (mismatch, diversity)
VARIATIONS = 10
MAX_JUDGE_IMAGES = 6000


def split(name: str, shots: int, seed: int) -> tuple[ImageSet, ImageSet, ImageSet]:
    """(source, target shots, the target's other training images) of a development scenario."""
    d = scenario(name)
    opts = LoadOptions(d["image_size"], 1)
    src = load_dataset(d["source"], opts)["train"]
    source = select_classes(src, resolve_classes(src, d["source_classes"], "source_classes"))
    tgt = load_dataset(d["target"], opts)["train"]
    target = select_classes(tgt, resolve_classes(tgt, d["target_classes"], "target_classes"))
    shot_idx, rest = sample_shots(target, shots, np.random.default_rng(seed), name)
    return source, target.subset(shot_idx), target.subset(rest)


def flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1).astype(np.float32) / 255.0


def real_pair_distance(ds: ImageSet, rng: np.random.Generator, n: int = 2000) -> float:
    """Mean per-pixel |a - b| of two random images of one class."""
    out = []
    for _ in range(n):
        k = rng.integers(len(ds.class_names))
        a, b = rng.choice(np.flatnonzero(ds.y == k), size=2, replace=False)
        out.append(np.abs(flat(ds.x[a:a + 1]) - flat(ds.x[b:b + 1])).mean())
    return float(np.mean(out))


def one(name: str, seed: int, mismatch: float, diversity: float, shots: int) -> dict:
    torch.set_num_threads(1)
    source, shot_set, rest = split(name, shots, seed)
    rng = np.random.default_rng(seed)
    judge_idx = rng.choice(len(rest), size=min(MAX_JUDGE_IMAGES, len(rest)), replace=False)
    judge = LogisticRegression(max_iter=300).fit(flat(rest.x[judge_idx]), rest.y[judge_idx])
    p = load_params("params.yaml").dagan
    tc = train_config(p.model_copy(update={"mismatch": mismatch, "diversity": diversity, "seed": seed}))
    trainer, summary = train_dagan(source, shot_set, tc, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(dagan_checkpoint(trainer, tc, shot_set.class_names), Path(tmp) / "dagan.pt")
        sampler = load_sampler(Path(tmp) / "dagan.pt", SampleOptions(), expect="dagan")
    labels = torch.from_numpy(np.repeat(shot_set.y, VARIATIONS))
    out = sampler(labels, torch.Generator().manual_seed(seed), shot_set)
    parents = out.columns["parent_shot"]
    kept = float((judge.predict(flat(out.images)) == shot_set.y[parents]).mean())
    return {"dataset": name, "seed": seed, "mismatch": mismatch, "diversity": diversity, "kept": kept,
            "judge_on_shots": float((judge.predict(flat(shot_set.x)) == shot_set.y).mean()),
            "distance": float(np.abs(flat(out.images) - flat(shot_set.x[parents])).mean()),
            "real_pair": real_pair_distance(rest, rng), "train_seconds": summary["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["mnist04", "fashion_rev"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--raw", type=Path, default=None)
    a = ap.parse_args()
    cells = [(d, s, m, v, a.shots) for d in a.datasets for s in a.seeds for m, v in SETTINGS]
    with ProcessPoolExecutor(a.jobs) as pool:
        rows = list(pool.map(one, *zip(*cells)))
    for r in rows:
        print(json.dumps(r))
    print("\nmismatch diversity | kept (judge on shots) | distance / real pair")
    for m, v in SETTINGS:
        sel = [r for r in rows if r["mismatch"] == m and r["diversity"] == v]
        print(f"{m:8} {v:9} | {np.mean([r['kept'] for r in sel]):.3f} ({np.mean([r['judge_on_shots'] for r in sel]):.3f})"
              f" | {np.mean([r['distance'] / r['real_pair'] for r in sel]):.3f}  "
              + "  ".join(f"{d}: kept {np.mean([r['kept'] for r in sel if r['dataset'] == d]):.3f}, "
                          f"dist {np.mean([r['distance'] / r['real_pair'] for r in sel if r['dataset'] == d]):.3f}"
                          for d in a.datasets))
    if a.raw:
        a.raw.write_text(json.dumps({"command": command_line(), "machine": machine(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
