"""Restoration benchmark (issue #16): PSNR/SSIM and downstream macro-F1 for none / classical / learned restoration,
per corruption and severity, over paired seeds; written to docs/benchmarks.md.

Each (dataset, seed) prepares the data and pretrains the classifier once (the stage cores), then runs the `restore`
stage's core (`stages/restore.py`) for every corruption: the corruption damages the shots and the test set
(`data.corrupt_on: both`), each treatment is fine-tuned and tested on its own images. Paired across treatments:
same shots, same damage, same seed.

    GANAUG_SHARED_DATA=../shared/data .venv/bin/python -m bench.restore --datasets digits fashion --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml

from bench.common import DOC, ROOT, command_line, deep_update, fmt_ci, machine, markdown_table, mean_ci, publish
from bench.uplift import scenario

CORRUPTIONS = ["noise:0.1", "noise:0.3", "blur:0.25", "blur:0.5", "occlusion:0.2", "occlusion:0.4",
               "pixels:0.3", "pixels:0.6", "combo:0.2", "combo:0.4"]
TREATMENTS = ("none", "classical", "learned")


def run_seed(dataset: str, seed: int, corruptions: list[str], threads: int) -> list[dict]:
    """Every corruption for one (dataset, seed): the restore core's metrics, one row per corruption."""
    os.environ["GANAUG_THREADS"] = str(threads)
    import torch

    from ganaug.config.params import parse_params
    from ganaug.io.data import load_prepared
    from ganaug.nets.classifier import save_classifier
    from ganaug.train.runtime import configure_threads
    from stages.prepare import prepare
    from stages.pretrain import pretrain
    from stages.restore import restore

    cpu = torch.device("cpu")
    configure_threads(cpu)
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    seeds = {s: {"seed": seed} for s in ("classifier", "finetune", "restore")}
    raw = deep_update(base, {"data": {**scenario(dataset), "seed": seed}, **seeds})
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        params = parse_params(raw)
        prepare(params.data, work / "prepared")
        source, train, test = (load_prepared(work / "prepared" / f"{n}.npz") for n in ("source", "target_train", "target_test"))
        model, cfg, summary = pretrain(source, params.classifier, cpu)
        save_classifier(work / "classifier.pt", model, cfg, source.class_names, summary)
        for spec in corruptions:
            p = parse_params(deep_update(raw, {"data": {"corrupt": spec, "corrupt_on": "both"},
                                               "restore": {"enabled": True}}))
            t0 = time.perf_counter()
            r = restore(train, test, source, p, work / "classifier.pt", cpu, work / "ckpt")
            m = r.metrics
            rows.append({"dataset": dataset, "seed": seed, "corruption": spec, "seconds": round(time.perf_counter() - t0, 1),
                         "quality": m["quality"], "downstream": m["downstream"], "n_test": len(test),
                         "learned_seconds": m["learned"]["source"]["seconds"]})
            print(f"restore bench: {dataset} seed {seed} {spec}: "
                  + ", ".join(f"{t} PSNR {m['quality'][t]['psnr']:.2f} F1 {m['downstream'][t]['macro_f1']:.3f}"
                              for t in TREATMENTS) + f" ({rows[-1]['seconds']} s)", flush=True)
    return rows


def summarise(rows: list[dict]) -> str:
    """A table per dataset: mean over seeds (95% t-interval) of PSNR, SSIM and macro-F1 per treatment, and the
    paired macro-F1 difference of learned vs classical."""
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        table = []
        for spec in dict.fromkeys(r["corruption"] for r in rows if r["dataset"] == dataset):
            cell = [r for r in rows if r["dataset"] == dataset and r["corruption"] == spec]
            line = [f"`{spec}`", str(len(cell))]
            for key in ("psnr", "ssim"):
                line += [" / ".join(f"{np.mean([r['quality'][t][key] for r in cell]):.{2 if key == 'psnr' else 3}f}"
                                    for t in TREATMENTS)]
            line += [fmt_ci(*mean_ci([r["downstream"][t]["macro_f1"] for r in cell])) for t in TREATMENTS]
            diff = [r["downstream"]["learned"]["macro_f1"] - r["downstream"]["classical"]["macro_f1"] for r in cell]
            line.append(fmt_ci(*mean_ci(diff)))
            table.append(line)
        n_test = next(r["n_test"] for r in rows if r["dataset"] == dataset)
        out += [f"**{dataset}** ({n_test} test images)", "",
                markdown_table(["corruption", "seeds", "PSNR dB none / classical / learned",
                                "SSIM none / classical / learned", "macro-F1 none", "macro-F1 classical",
                                "macro-F1 learned", "learned - classical (paired)"], table), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["digits", "fashion"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--corruptions", nargs="+", default=CORRUPTIONS)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per job")
    ap.add_argument("--out", type=Path, default=DOC)
    ap.add_argument("--raw", type=Path, default=ROOT / "bench/results/restore.json")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    jobs = [(d, s) for d in args.datasets for s in args.seeds]
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_seed, d, s, args.corruptions, args.threads) for d, s in jobs]
        rows = [r for f in futures for r in f.result()]
    body = "\n".join([
        "## Restoration (issue #16)", "",
        f"Command: `{command_line()}`; {machine()}; {args.jobs} job(s) x {args.threads} thread(s); "
        f"{round(time.perf_counter() - t0)} s in all.", "",
        "The corruption damages the target's shots and test set (`data.corrupt_on: both`); each treatment's classifier "
        "is fine-tuned on its repaired shots and tested on its repaired test images (`stages/restore.py`, default "
        "`restore:` params). PSNR/SSIM on the test images against the clean ones (mean over seeds); macro-F1 as mean "
        "[95% t-interval over seeds].", "", summarise(rows)])
    publish(args.out, "restore", body, args.raw, {"rows": rows, "seconds": round(time.perf_counter() - t0, 1)})


if __name__ == "__main__":
    main()
