"""Choosing the `classical` variant's augmentation policy (`finetune.augment`) on the development scenarios.

Each (development scenario, seed, shot count) is prepared and pretrained exactly
as the pipeline's `prepare` and `pretrain` stages do (the core functions, params.yaml
with `bench/uplift.py`'s seeding: the seed sets the shot sample and every training
seed). The pretrained classifier is then fine-tuned on the shots once per policy
(`ganaug/train/classical_aug.py`: crop, trivialaugment, randaugment, elastic,
mixup, cutmix, and none, the real-only model) as the `classical` variant is, and
scored on the held-out test set. With the shipped policy the score equals that
run's `classical` in `metrics/eval.json`.

The rule, fixed before the runs: the policy with the highest mean Δ macro-F1
against real-only over all development cells (2 scenarios x the shot counts, 5
paired seeds each) becomes the default, unless it is clearly worse than another
policy in some cell.

    .venv/bin/python -m bench.classical_policy --seeds 0 1 2 3 4 --shots 5 10 20 --jobs 2 \\
        --raw bench/results/classical_policy_dev.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from bench.common import command_line, machine, mean_ci
from bench.uplift import cell_params, scenario
from ganaug.config.params import AUGMENT_POLICIES, parse_params
from ganaug.io.data import load_prepared, to_float
from ganaug.judge.metrics import classification_metrics
from ganaug.nets.classifier import save_classifier
from ganaug.train.finetune import finetune
from ganaug.train.fit import predict
from stages.prepare import prepare
from stages.pretrain import pretrain

import yaml


def one(name: str, seed: int, shots: list[int], policies: list[str]) -> list[dict]:
    """Every policy's test macro-F1 at every shot count, for one scenario and seed."""
    torch.set_num_threads(1)
    base = yaml.safe_load(Path("params.yaml").read_text())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in shots:
            p = parse_params(cell_params(base, scenario(name), k, seed, {}))
            prepare(p.data, Path(tmp) / f"prepared{k}")
            train, test = (load_prepared(Path(tmp) / f"prepared{k}" / f) for f in ("target_train.npz", "target_test.npz"))
            if k == shots[0]:  # the source set does not depend on the shot count
                source = load_prepared(Path(tmp) / f"prepared{k}" / "source.npz")
                model, cfg, summary = pretrain(source, p.classifier, torch.device("cpu"))
                save_classifier(Path(tmp) / "pretrained.pt", model, cfg, source.class_names, summary)
            for policy in policies:
                m, _, _ = finetune(Path(tmp) / "pretrained.pt", train, p.finetune, torch.device("cpu"), augment=policy)
                pred = predict(m, to_float(test.x), 512, torch.device("cpu")).argmax(1).numpy()
                met = classification_metrics(test.y, pred, test.class_names)
                rows.append({"dataset": name, "seed": seed, "shots": k, "policy": policy,
                             "macro_f1": met["macro_f1"], "accuracy": met["accuracy"]})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def summarize(rows: list[dict], policies: list[str]) -> str:
    """Per policy and cell: mean Δ macro-F1 against `none` with its paired 95% interval; the mean over cells."""
    cells = sorted({(r["dataset"], r["shots"]) for r in rows})
    f1 = {(r["dataset"], r["shots"], r["seed"], r["policy"]): r["macro_f1"] for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    lines = ["| policy | " + " | ".join(f"{d} {k}" for d, k in cells) + " | mean |", "|---" * (len(cells) + 2) + "|"]
    for policy in policies:
        if policy == "none":
            continue
        out, means = [], []
        for d, k in cells:
            m, h = mean_ci([f1[d, k, s, policy] - f1[d, k, s, "none"] for s in seeds])
            means.append(m)
            out.append(f"{m:+.4f} [{m - h:+.4f}, {m + h:+.4f}]" if h is not None else f"{m:+.4f}")
        lines.append(f"| {policy} | " + " | ".join(out) + f" | {np.mean(means):+.4f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["mnist04", "fashion_rev"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--shots", nargs="+", type=int, default=[5, 10, 20])
    ap.add_argument("--policies", nargs="+", default=list(AUGMENT_POLICIES))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--raw", type=Path, default=None)
    a = ap.parse_args()
    policies = ["none"] + [p for p in a.policies if p != "none"]
    cells = [(d, s, a.shots, policies) for d in a.datasets for s in a.seeds]
    with ProcessPoolExecutor(a.jobs) as pool:
        rows = [r for part in pool.map(one, *zip(*cells)) for r in part]
    if a.raw:
        a.raw.write_text(json.dumps({"command": command_line(), "machine": machine(), "rows": rows}, indent=1) + "\n")
    print("\nΔ macro-F1 against real-only (none), paired 95% t-interval over seeds:\n" + summarize(rows, policies))


if __name__ == "__main__":
    main()
