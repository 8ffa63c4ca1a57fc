"""Synthesis: a trained generator -> a filtered, labelled ImageFolder tree with its manifest and report.

The generator is any registered kind (`ganaug/nets/generators.py`), loaded as a
`Sampler`; a conditioned kind draws from the real shots (`real`), and the
per-image columns it returns (e.g. the parent shot) follow MANIFEST_COLUMNS in
the manifest. The GAN (kind `gan`) returns none.

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
from ganaug.io.data import ImageSet
from ganaug.io.imagefolder import MANIFEST, manifest_frame, write_pngs
from ganaug.io.pictures import GRID_COLUMNS, plot_samples
from ganaug.judge.synth_filter import Generate, generate_until_quota, load_judge, quotas
from ganaug.nets.generators import load_sampler
from ganaug.nets.sampling import SampleOptions, Sampler, Samples, require_shots

REPORT = "report.json"  # in data/synthetic: quotas, shortfalls, the filter and the copy check


def sample_options(p: SynthParams, device: torch.device) -> SampleOptions:
    """The synth params a generator samples with."""
    return SampleOptions(weights=p.generator, truncation=p.truncation, batch_size=p.batch_size, device=device)


def stream(sampler: Sampler, seed: int, shots: Optional[ImageSet]) -> Generate:
    """labels -> samples; every call continues the one noise stream seeded with `seed`."""
    g = torch.Generator().manual_seed(seed)
    return lambda labels: sampler(labels, g, shots)


def manifest(paths: list[str], y: np.ndarray, kept: Samples, class_names: list[str], sha: str,
             seed: int) -> pd.DataFrame:
    """MANIFEST_COLUMNS, then the generator's own per-image columns."""
    df = manifest_frame(paths, y, class_names, sha, seed)
    clash = sorted(set(kept.columns) & set(df.columns))
    if clash:
        raise ValueError(f"generator columns {clash} would replace manifest columns")
    return df.assign(**kept.columns)


def synthesize(generator_path: Path, p: SynthParams, out_dir: Path, samples_png: Path, device: torch.device,
               real: Optional[ImageSet] = None, judge_path: Optional[Path] = None,
               expect: Optional[str] = None) -> pd.DataFrame:
    """Write the kept synthetic images, their manifest and `report.json` to `out_dir`, and the sample grid.

    `real` (the target shots) sets the quotas of `synth.ratio` and is what a conditioned
    generator draws from; with `judge_path` (the classifier fine-tuned on them)
    candidates are filtered and checked for copies. `expect`: load only a generator of that kind.
    """
    sampler = load_sampler(generator_path, sample_options(p, device), expect)
    require_shots(sampler, real)
    judge = load_judge(judge_path, real, p.batch_size, device) if judge_path is not None and real is not None else None
    counts = np.bincount(real.y, minlength=sampler.n_classes) if real is not None else None
    quota = quotas(p, sampler.n_classes, counts)
    kept, y, rep = generate_until_quota(stream(sampler, p.seed, real), judge, quota, p)
    kept = kept if kept is not None else sampler.empty()
    rep["per_class"] = dict(zip(sampler.class_names, rep["per_class"].values()))
    sha = file_sha256(generator_path)
    with atomic_dir(out_dir) as tmp:
        paths = write_pngs(tmp, kept.images, y, sampler.class_names, stem="syn")
        df = manifest(paths, y, kept, sampler.class_names, sha, p.seed)
        df.to_parquet(tmp / MANIFEST, index=False)
        (tmp / REPORT).write_text(json.dumps({**rep, "generator": p.generator, "truncation": p.truncation},
                                             indent=2, sort_keys=True) + "\n")
    plot_grid(sampler, kept, y, p, real, samples_png)
    return df


def plot_grid(sampler: Sampler, kept: Samples, y: np.ndarray, p: SynthParams, real: Optional[ImageSet],
              path: Path) -> None:
    """The first images of every class as written; with none written, preview samples from a fresh stream."""
    x, title = kept.images, f"synthetic samples ({p.generator} generator, seed {p.seed})"
    if len(y) == 0:
        labels = torch.arange(sampler.n_classes).repeat_interleave(GRID_COLUMNS)
        x, y = stream(sampler, p.seed, real)(labels).images, labels.numpy()
        title = f"preview only: no synthetic images kept or asked for (seed {p.seed})"
    plot_samples(x, y, sampler.class_names, title, path)
