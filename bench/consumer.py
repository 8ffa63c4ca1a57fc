"""What a downstream team gets from the published dataset, with a model written outside ganaug.

For each (scenario, seed): one pipeline run on a throw-away project copy with the
shipped params (`bench.uplift`'s scenarios and seeding: a seed changes the shot
sample and every training seed), then a consumer's own small CNN (defined here,
trained from scratch, the same optimiser steps and seed for every recipe) on the
published `data/augmented`, scored by macro-F1 on the target's held-out test images:

| recipe | what the consumer trains on |
|---|---|
| `real` | the real shots alone (what the team has without ganaug) |
| `folders` | torchvision `ImageFolder` over the class folders as published (`publish.hard_view` as shipped) |
| `hard_all` | every real and synthetic image with the class it was generated for (the class folders' content before soft labels) |
| `confident<c>_k<k>` | the class folders under `publish.hard_view: confident` (teacher p >= c on the published probabilities, at temperature 2, at most k per real shot) |
| `soft` | docs/downstream.md's recipe: a real batch (cross-entropy) and a batch of the other images (distillation at the datasheet's temperature) every step |
| `soft_synthetic` | the same without the relabelled source images (`publish.source_images: false`) |

Development scenarios only (`mnist04`, `fashion_rev`): the hard-label view's default is chosen here.

    .venv/bin/python -m bench.consumer --datasets mnist04 fashion_rev --shots 10 --seeds 0 1 2 3 4 --jobs 2 \
        --raw bench/results/consumer_dev_10.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from sklearn.metrics import f1_score
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from bench.common import (DOC, ROOT, Skip, command_line, fmt_delta, machine, make_project, markdown_table, mean_ci,
                          publish)
from bench.uplift import DEV_DATASETS, cell_params, scenario
from pipeline.sweep_cell import repro
from ganaug.config.params import PublishParams
from ganaug.io.data import load_prepared
from ganaug.judge.hard_view import hard_view
from ganaug.published import load

CONFIDENT = ((0.5, 1), (0.5, 4), (0.7, 1), (0.7, 4))  # (min_confidence on the published probs, max_per_shot)
RECIPES = ("real", "folders", "hard_all", *(f"confident{c}_k{k}" for c, k in CONFIDENT), "soft", "soft_synthetic")


@dataclass
class Consumer:
    """The consumer's training budget: the same for every recipe."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 5e-4


class SmallCNN(nn.Module):
    """A plain CNN a downstream team might write: three conv blocks, global pooling, a linear head."""

    def __init__(self, channels: int, n_classes: int, width: int = 32):
        super().__init__()
        blocks, c = [], channels
        for w in (width, 2 * width, 4 * width):
            blocks += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
            c = w
        self.body = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) in [0, 1]
        return self.head(self.body(x * 2 - 1))


class HardRows(Dataset):
    """(image, class) of chosen published rows: real rows by their label, synthetic rows by the class asked for."""

    def __init__(self, root: Path, mask: np.ndarray):
        self.ds = load(root)
        labels = self.ds.frame["label"].fillna(self.ds.frame["asked_label"]).to_numpy()
        self.rows = np.flatnonzero(mask)
        self.labels = labels[self.rows].astype(np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.ds[int(self.rows[i])][0], int(self.labels[i])


def forever(loader: DataLoader) -> Iterator:
    while True:
        yield from loader


def _loader(ds: Dataset, batch_size: int, seed: int) -> Iterator:
    g = torch.Generator().manual_seed(seed)
    return forever(DataLoader(ds, batch_size=batch_size, shuffle=True, generator=g, drop_last=len(ds) > batch_size))


def train_hard(ds: Dataset, n_classes: int, channels: int, c: Consumer, seed: int) -> nn.Module:
    """A hard-label consumer: shuffled batches of (image, class), cross-entropy."""
    torch.manual_seed(seed)
    model = SmallCNN(channels, n_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    batches = _loader(ds, c.batch_size, seed)
    model.train()
    for _ in range(c.steps):
        x, y = next(batches)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def train_soft(root: Path, origins: tuple[str, ...], n_classes: int, channels: int, c: Consumer, seed: int) -> nn.Module:
    """docs/downstream.md's recipe: a real batch and a stream batch each step, distillation at the temperature."""
    torch.manual_seed(seed)
    real, stream = load(root, origin="real"), load(root, origin=origins)
    t = stream.temperature
    model = SmallCNN(channels, n_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    real_batches, stream_batches = _loader(real, c.batch_size, seed), _loader(stream, c.batch_size, seed + 1)
    model.train()
    for _ in range(c.steps):
        x, p, _ = next(real_batches)
        xs, ps, _ = next(stream_batches)
        logits = model(torch.cat([x, xs]))  # (B + S, K): one forward, BatchNorm over both
        loss = F.cross_entropy(logits[: len(x)], p.argmax(1))
        loss = loss + t * t * F.kl_div(F.log_softmax(logits[len(x):] / t, 1), ps, reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def macro_f1(model: nn.Module, test_npz: Path) -> float:
    test = load_prepared(test_npz)
    x = torch.from_numpy(test.x).float() / 255.0  # (N, C, H, W)
    pred = torch.cat([model(x[i:i + 512]).argmax(1) for i in range(0, len(x), 512)]).numpy()
    return float(f1_score(test.y, pred, average="macro"))


def consume(project: Path, c: Consumer, seed: int) -> dict[str, float]:
    """Macro-F1 of every recipe on the published dataset of one pipeline run."""
    root, test = project / "data/augmented", project / "data/restored/target_test.npz"
    ds = load(root)
    f = ds.frame
    k, channels = len(ds.classes), ds[0][0].shape[0]
    probs = np.stack(f["probs"].to_numpy())
    asked = f["asked_label"].fillna(-1).to_numpy(np.int64)
    origin = f["origin"].to_numpy()
    counts = np.bincount(asked[origin == "real"], minlength=k)
    masks = {"real": origin == "real", "hard_all": origin != "source"}
    for conf, kk in CONFIDENT:
        p = PublishParams(hard_view="confident", min_confidence=conf, max_per_shot=kk)
        masks[f"confident{conf}_k{kk}"] = hard_view(origin, asked, probs, counts, p)
    out = {name: macro_f1(train_hard(HardRows(root, m), k, channels, c, seed), test) for name, m in masks.items()}
    folder = ImageFolder(str(root), transform=v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                                                          v2.Grayscale() if channels == 1 else v2.Identity()]))
    out["folders"] = macro_f1(train_hard(folder, k, channels, c, seed), test)
    out["soft"] = macro_f1(train_soft(root, ("synthetic", "source"), k, channels, c, seed), test)
    out["soft_synthetic"] = macro_f1(train_soft(root, ("synthetic",), k, channels, c, seed), test)
    out["kept"] = {name: int(m.sum()) for name, m in masks.items()}
    return out


def run_cell(dataset: str, shots: int, seed: int, work: Path, c: Consumer) -> dict:
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    project = make_project(work / f"{dataset}-{shots}-seed{seed}", cell_params(base, scenario(dataset), shots, seed, {}))
    t0 = time.perf_counter()
    repro(project, threads=1)
    pipeline = json.loads((project / "metrics/eval.json").read_text())
    cell = {"dataset": dataset, "shots": shots, "seed": seed, "pipeline_s": round(time.perf_counter() - t0),
            "consumer": consume(project, c, seed),
            "pipeline_macro_f1": {v: pipeline[v]["macro_f1"] for v in pipeline if isinstance(pipeline[v], dict)
                                  and "macro_f1" in pipeline[v]}}
    print(f"consumer: {dataset} seed {seed}: {json.dumps({r: round(cell['consumer'][r], 4) for r in RECIPES})}",
          flush=True)
    return cell


def table(cells: list[dict]) -> str:
    """Per scenario and recipe: mean macro-F1 and the paired Δ against `real` with its 95% interval."""
    rows = []
    for dataset, shots in dict.fromkeys((c["dataset"], c["shots"]) for c in cells):
        group = sorted((c for c in cells if (c["dataset"], c["shots"]) == (dataset, shots)), key=lambda c: c["seed"])
        for r in RECIPES:
            f1 = [c["consumer"][r] for c in group]
            d = [c["consumer"][r] - c["consumer"]["real"] for c in group]
            m, h = mean_ci(d)
            delta = "" if r == "real" else (fmt_delta(m, m - h, m + h) if h is not None else f"{m:+.3f}")
            kept = group[0]["consumer"]["kept"].get(r, "")
            rows.append([dataset, shots, r, f"{np.mean(f1):.4f}", delta, len(group), kept])
    return markdown_table(["scenario", "shots", "recipe", "macro-F1", "Δ vs real (95% paired)", "seeds",
                           "images (seed 0)"], rows)


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(DEV_DATASETS), choices=DEV_DATASETS)
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--raw", type=Path, help="write every cell's numbers as JSON here")
    ap.add_argument("--out", type=Path, default=DOC.parent / "downstream.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    c, t0 = Consumer(), time.perf_counter()
    jobs = []
    for d in args.datasets:
        try:
            scenario(d)
        except Skip as exc:
            print(f"consumer: skipping {d}: {exc}", flush=True)
            continue
        jobs += [(d, args.shots, s) for s in args.seeds]
    with tempfile.TemporaryDirectory(prefix="ganaug-consumer-") as tmp, ThreadPoolExecutor(args.jobs) as pool:
        cells = list(pool.map(lambda j: run_cell(*j, Path(tmp), c), jobs))
    body = "\n".join([
        "### Measured: a consumer's own model on the published dataset (`bench/consumer.py`)", "",
        f"- Command: `{command_line()}`",
        f"- Machine: {machine()}; {len(jobs)} pipeline runs, {args.jobs} at a time, {(time.perf_counter() - t0) / 60:.0f} min",
        f"- Consumer: a small CNN from scratch (`bench/consumer.py` `SmallCNN`), {c.steps} AdamW steps of "
        f"{c.batch_size} images (soft recipes: plus {c.batch_size} stream images), lr {c.lr}, the same seed per recipe",
        "- Δ: paired over seeds against `real` (the shots alone); `*`: the 95% interval excludes 0", "",
        table(cells)])
    publish(args.out, "consumer", body, args.raw, {"machine": machine(), "consumer": vars(c), "cells": cells})


if __name__ == "__main__":
    main()
