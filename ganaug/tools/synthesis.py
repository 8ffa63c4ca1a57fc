"""Synthesis: a trained generator -> a filtered, labelled ImageFolder tree with its manifest and report.

Shared by the `synthesize` stage and `ganaug sample` (one copy of the code).
The tree is `<class folder>/syn_<i>.png` (`ganaug/io/imagefolder.py`), with
`manifest.parquet` (columns `MANIFEST_COLUMNS`) and `report.json` (per-class
quota, kept, drawn and shortfall; the memorisation check). Rows are class-major.

- Which weights: `generator` = `ema` (default), `average` (mean of the last
  `gan.average_last` snapshots) or `raw`.
- How many: `per_class`, or `ratio` synthetic images per real shot.
- Truncation trick: `truncation` t redraws noise entries with |z| > t.
- Filter (`ganaug/judge/synth_filter.py`): with a judge (a classifier fine-tuned on
  the real shots) candidates are filtered (`filter` none | confidence |
  top_fraction, drawing more until the quota is met or `max_factor` x quota
  candidates were drawn), and pixel-exact copies of a real shot, and candidates
  closer than `min_nn_distance` to one in the judge's feature space, are dropped.

All noise comes from one `torch.Generator` seeded with `seed`, drawn in rounds of
class-major candidates, so the result does not depend on `batch_size`; with
`filter: none` and no copies dropped, row i of the manifest is noise vector i.
`generator_sha256` is the sha256 of the checkpoint's bytes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch

from ganaug.config.params import SynthParams
from ganaug.io.atomic import atomic_dir, file_sha256
from ganaug.io.data import ImageSet, to_uint8
from ganaug.io.imagefolder import MANIFEST, manifest_frame, write_pngs
from ganaug.io.pictures import GRID_COLUMNS, plot_samples
from ganaug.judge.synth_filter import generate_until_quota, load_judge, quotas
from ganaug.nets.gan import load_generator, sample

REPORT = "report.json"  # in data/synthetic: quotas, shortfalls, the filter and the copy check


def _sampler(net: torch.nn.Module, z_dim: int, p: SynthParams, device: torch.device):
    """labels -> uint8 images; every call continues the one noise stream seeded with synth.seed."""
    g = torch.Generator().manual_seed(p.seed)
    return lambda labels: to_uint8(sample(net, labels, z_dim, g, device, p.batch_size, p.truncation))


def synthesize(gan_path: Path, p: SynthParams, out_dir: Path, samples_png: Path, device: torch.device,
               real: Optional[ImageSet] = None, judge_path: Optional[Path] = None) -> pd.DataFrame:
    """Write the kept synthetic images, their manifest and `report.json` to `out_dir`, and the sample grid.

    `real` (the target shots) sets the quotas of `synth.ratio`; with `judge_path`
    (the classifier fine-tuned on them) candidates are filtered and checked for copies.
    """
    net, cfg, class_names = load_generator(gan_path, p.generator)
    net.to(device)
    judge = load_judge(judge_path, real, p.batch_size, device) if judge_path is not None and real is not None else None
    counts = np.bincount(real.y, minlength=cfg.n_classes) if real is not None else None
    quota = quotas(p, cfg.n_classes, counts)
    x, y, rep = generate_until_quota(_sampler(net, cfg.z_dim, p, device), judge, quota, p)
    if x is None:
        x = np.zeros((0, cfg.channels, cfg.image_size, cfg.image_size), np.uint8)
    rep["per_class"] = dict(zip(class_names, rep["per_class"].values()))
    sha = file_sha256(gan_path)
    with atomic_dir(out_dir) as tmp:
        paths = write_pngs(tmp, x, y, class_names, stem="syn")
        df = manifest_frame(paths, y, class_names, sha, p.seed)
        df.to_parquet(tmp / MANIFEST, index=False)
        (tmp / REPORT).write_text(json.dumps({**rep, "generator": p.generator, "truncation": p.truncation},
                                             indent=2, sort_keys=True) + "\n")
    title = f"synthetic samples ({p.generator} generator, seed {p.seed})"
    if len(y) == 0:
        labels = torch.arange(cfg.n_classes).repeat_interleave(GRID_COLUMNS)
        x, y = _sampler(net, cfg.z_dim, p, device)(labels), labels.numpy()
        title = f"preview only: no synthetic images kept or asked for (seed {p.seed})"
    plot_samples(x, y, class_names, title, samples_png)
    return df
