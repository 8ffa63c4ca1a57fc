"""Choose the fine-tuning defaults of the teacher-labelled second stream on development scenarios (issue #11).

For every (development dataset, seed, shots) the pipeline runs once with the
current params (`dvc repro` in a throw-away project copy, as `bench/uplift.py`
does); then every candidate setting of the `finetune:` stream keys is tried on
that run's files by calling the `finetune` stage's core functions directly
(GAN, synthetic images, teacher and real-only model stay the same), for the
variants `gan` (real + GAN stream) and `source` (real + relabelled source
images). Scored by macro-F1 on the development scenario's test set, paired
over seeds against real-only. The reported grid's datasets are refused here:
nothing is chosen on them.

    .venv/bin/python -m bench.distill_sweep                       # 2 dev datasets x 3 seeds x 5/20 shots: ~30 min
    .venv/bin/python -m bench.distill_sweep --configs soft mixed  # a subset of the candidates
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Optional

import yaml

from bench.common import (DOC, ROOT, Skip, command_line, fmt_ci, fmt_delta, machine, make_project, markdown_table,
                          mean_ci, publish, usable_cores)
from bench.uplift import BASELINE, CLASSICAL, DEV_DATASETS, cell_params, scenario
from pipeline.sweep_cell import repro

# candidate settings of the stream keys of `finetune:` (each on top of params.yaml's finetune section)
CONFIGS: dict[str, dict] = {
    "soft": {"synth_labels": "soft"},
    "mixed": {"synth_labels": "mixed", "mixed_hard_weight": 0.5},
    "hard": {"synth_labels": "hard"},
    "soft_ensemble": {"synth_labels": "soft", "teacher": ["baseline", "classical"]},
    "soft_noisy": {"synth_labels": "soft", "synth_augment": "trivialaugment"},
    "soft_bn_joint": {"synth_labels": "soft", "bn": "joint"},
    "soft_w0.5": {"synth_labels": "soft", "synth_weight": 0.5},
    "soft_T4": {"synth_labels": "soft", "temperature": 4.0},
    "soft_first": {"synth_labels": "soft", "schedule": "synthetic_first"},
}
VARIANTS = {"gan": ["data/synthetic"], "source": ["data/prepared/source.npz"]}


def score_configs(project: Path, configs: dict[str, dict], variants: list[str]) -> dict:
    """macro-F1 of every (config, variant) on this project's test set, from its finished `dvc repro`."""
    import torch

    from ganaug.config.params import FinetuneParams
    from ganaug.io.data import load_prepared, to_float
    from ganaug.judge.metrics import classification_metrics
    from ganaug.train.finetune import build_stream, finetune
    from ganaug.train.fit import predict

    base = yaml.safe_load((project / "params.yaml").read_text())["finetune"]
    train = load_prepared(project / "data/restored/target_train.npz")
    test = load_prepared(project / "data/restored/target_test.npz")
    cpu = torch.device("cpu")
    out = {}
    for name, extra in configs.items():
        p = FinetuneParams(**{**base, **extra})
        teachers = [project / f"models/finetune/{t}.pt" for t in p.teacher]
        for v in variants:
            t0 = time.perf_counter()
            stream = build_stream([project / e for e in VARIANTS[v]], train, teachers, p, 512, cpu)
            model, _, _ = finetune(project / "models/classifier.pt", train, p, cpu, stream=stream)
            pred = predict(model, to_float(test.x), 512, cpu).argmax(1).numpy()
            m = classification_metrics(test.y, pred, test.class_names)
            out[f"{name}/{v}"] = {"macro_f1": m["macro_f1"], "accuracy": m["accuracy"],
                                  "seconds": round(time.perf_counter() - t0, 1)}
    return out


def run_group(job: dict) -> list[dict]:
    """One (dataset, seed): its shot counts one after the other in one project copy."""
    os.environ["GANAUG_THREADS"] = str(job["threads"])
    import torch
    torch.set_num_threads(job["threads"])
    project = make_project(Path(job["work"]), cell_params(job["base"], job["data"], job["shots"][0], job["seed"], {}))
    cells = []
    for k in job["shots"]:
        (project / "params.yaml").write_text(yaml.safe_dump(cell_params(job["base"], job["data"], k, job["seed"], {}),
                                                            sort_keys=False))
        repro(project, job["threads"])
        ev = json.loads((project / "metrics/eval.json").read_text())
        gm = json.loads((project / "metrics/gan.json").read_text())
        scores = score_configs(project, job["configs"], job["variants"])
        cell = {"dataset": job["dataset"], "seed": job["seed"], "shots": k, "scores": scores,
                "reference": {v: ev[v]["macro_f1"] for v in (BASELINE, CLASSICAL, "gan", "source") if v in ev},
                "cas_macro_f1": (gm.get("cas") or {}).get("synthetic", {}).get("macro_f1")}
        print(f"distill_sweep: {job['dataset']} seed {job['seed']} shots {k}: real-only "
              f"{cell['reference'][BASELINE]:.3f}, " + ", ".join(f"{n} {s['macro_f1']:.3f}" for n, s in scores.items()),
              flush=True)
        cells.append(cell)
    return cells


def render(cells: list[dict], command: str, seconds: float) -> str:
    keys = sorted({(c["dataset"], c["shots"]) for c in cells})
    names = list(cells[0]["scores"]) if cells else []
    rows, wins = [], {n: 0 for n in names}
    for name in names:
        row = [name]
        for key in keys:
            group = [c for c in cells if (c["dataset"], c["shots"]) == key]
            d = [c["scores"][name]["macro_f1"] - c["reference"][BASELINE] for c in group]
            m, h = mean_ci(d)
            row.append(fmt_delta(m, m - h, m + h) if h is not None else f"{m:+.3f}")
            wins[name] += m
        row.append(f"{wins[name] / max(len(keys), 1):+.4f}")
        rows.append(row)
    ref_rows = []
    for key in keys:
        group = [c for c in cells if (c["dataset"], c["shots"]) == key]
        base = mean_ci([c["reference"][BASELINE] for c in group])
        cls = [c["reference"][CLASSICAL] - c["reference"][BASELINE] for c in group]
        m, h = mean_ci(cls)
        cas = [c["cas_macro_f1"] for c in group if c["cas_macro_f1"] is not None]
        ref_rows.append([key[0], key[1], len(group), fmt_ci(*base), fmt_delta(m, m - h, m + h) if h is not None else f"{m:+.3f}",
                         fmt_ci(*mean_ci(cas)) if cas else "n/a"])
    return "\n".join([
        "## Development sweep: how the second stream enters fine-tuning (`bench/distill_sweep.py`)", "",
        f"- Command: `{command}`",
        f"- Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {seconds / 60:.1f} min; machine: {machine()}",
        "- Development scenarios only (MNIST 0-4 -> 5-9, Fashion-MNIST 5-9 -> 0-4); the reported grid is never used "
        "to choose. Each row: Δ macro-F1 against real-only, mean and 95% interval over seeds (paired); `*`: excludes 0. "
        "`config/variant`: `gan` = real + GAN stream, `source` = real + relabelled source images.", "",
        markdown_table(["config/variant", *[f"{d} {k} shots" for d, k in keys], "mean Δ"], rows), "",
        "Reference per cell (from the pipeline's own `evaluate` and `gan_metrics`):", "",
        markdown_table(["dataset", "shots", "seeds", "real-only macro-F1", "Δ real + classical", "CAS macro-F1"], ref_rows),
    ]) + "\n"


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=list(DEV_DATASETS), choices=DEV_DATASETS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--shots", nargs="+", type=int, default=[5, 20])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--jobs", type=int, default=usable_cores())
    ap.add_argument("--out", type=Path, default=DOC)
    ap.add_argument("--raw", type=Path)
    args = ap.parse_args(argv)
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    work = Path(tempfile.mkdtemp(prefix="ganaug-sweep-"))
    threads = max(1, usable_cores() // args.jobs)
    jobs = []
    for d in args.datasets:
        try:
            data = scenario(d)
        except Skip as exc:
            print(f"distill_sweep: skipping {d}: {exc}")
            continue
        jobs += [{"dataset": d, "seed": s, "shots": sorted(args.shots), "base": base, "data": data,
                  "work": str(work / f"{d}-{s}"), "threads": threads, "variants": args.variants,
                  "configs": {n: CONFIGS[n] for n in args.configs}} for s in args.seeds]
    t0 = time.perf_counter()
    try:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            cells = [c for group in pool.map(run_group, jobs) for c in group]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    run = {"cells": cells, "configs": {n: CONFIGS[n] for n in args.configs}, "seconds": time.perf_counter() - t0}
    publish(args.out, "distill_dev", render(cells, command_line(), run["seconds"]), args.raw, run)
    return run


if __name__ == "__main__":
    main()
