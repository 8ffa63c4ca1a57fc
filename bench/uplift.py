"""Does GAN augmentation help, against the alternatives a user would pick?

The grid runs through `ganaug sweep` (`pipeline/sweep.py`): a throw-away copy
of the project (git + DVC, params.yaml plus `--set`) whose cells, (dataset,
shots, seed) each, are DVC experiments run `--jobs` at a time, exactly as a user's
sweep runs. The cells share the project's DVC cache, so one pretrained
classifier per (dataset, seed) serves all its shot counts (DVC's run cache);
with `--work DIR` the copy is kept, and running the same command again resumes
a grid cut short. The variants (below) are scored by the `evaluate` stage
(`metrics/eval.json`, with its paired-bootstrap intervals); GAN quality (CAS,
KID, precision/recall) comes from the `gan_metrics` stage (`metrics/gan.json`).
A seed changes the shot sample and every training seed. Stage wall times are
read off each cell's `dvc repro` output as it streams.

    .venv/bin/python -m bench.uplift --quick      # 3 seeds, 5 shots, 3 datasets (9 runs): about 25-35 min on 2 cores
    .venv/bin/python -m bench.uplift              # 5 seeds, 5/10/20 shots (45 runs): 2.5-3 hours on 2 cores; own section
    .venv/bin/python -m bench.plot_uplift RAW.json [RAW.json ...] -o docs/img/uplift_grid.png   # the grid as a plot

The variants are dvc.yaml's fine-tuning variants (real-only, real + classical,
real + GAN, real + source relabelled, real + GAN + source, and hard-label mixing
as an ablation: same optimiser-step budget and seed).

Datasets (all at the pipeline's default 16x16; `--set data.image_size=28` for
more detail at about 3x the GAN cost): `fashion` (Fashion-MNIST, source classes
0-4, novel target classes 5-9), `digits` (the embedded 8x8 digits, 0-4 -> 5-9)
and `mnist_usps` (MNIST -> USPS, all 10 classes). Fashion-MNIST, MNIST and
USPS are read from `GANAUG_SHARED_DATA` (default `../shared/data`); a dataset
whose files are absent is skipped, with the reason printed and in the report.
The development scenarios, on which defaults are chosen, are `--datasets mnist04
fashion_rev` (MNIST 0-4 -> 5-9 and Fashion-MNIST with the split reversed, 5-9 -> 0-4).
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from bench.common import (DOC, ROOT, Skip, command_line, deep_update, fmt_ci, fmt_delta, machine, make_project,
                          markdown_table, mean_ci, parse_overrides, usable_cores, publish)
from pipeline import datasets
from pipeline.dag import StageDag, read_dag
from pipeline.sweep import Outcome, read_from_experiment, run_sweep
from pipeline.workspace import head_experiments
from pipeline.sweep_exec import LocalExecutor
from pipeline.sweep_grid import Grid, cells

QUICK = {"seeds": [0, 1, 2], "shots": [5]}
FULL = {"seeds": [0, 1, 2, 3, 4], "shots": [5, 10, 20]}
DATASETS = ("fashion", "digits", "mnist_usps")  # the reported grid: it only reports
DEV_DATASETS = ("mnist04", "fashion_rev")  # development scenarios: defaults are chosen on these
BASELINE, CLASSICAL = "baseline", "classical"
LABELS = {BASELINE: "real-only", CLASSICAL: "real + classical", "gan": "real + GAN (teacher-labelled stream)",
          "source": "real + source relabelled", "gan_source": "real + GAN + source",
          "augmented": "ablation: hard-label mixing"}


def scenario(name: str) -> dict:
    """The `data:` params of a benchmark dataset (`pipeline/datasets.py`; Skip when its files are absent)."""
    try:
        return datasets.scenario(name)
    except datasets.MissingData as exc:
        raise Skip(str(exc)) from None


def cell_params(base: dict, data: dict, shots: int, seed: int, overrides: dict) -> dict:
    """params.yaml of one cell: the base, the dataset, the shot count, `seed` for every stage, then the overrides."""
    seeds = {s: {"seed": seed} for s in ("classifier", "gan", "synth", "finetune")}
    return deep_update(deep_update(base, {"data": {**data, "shots": shots, "seed": seed}, **seeds}), overrides)


# ---------------------------------------------------------------- running the grid: `ganaug sweep`

def variant_stages(dag: StageDag, variant: str) -> set[str]:
    """The stages a variant needs beyond what every variant needs (the real-only variant's upstream)."""
    def upstream(stage: str) -> set[str]:
        out, todo = set(), [stage]
        while todo:
            for u in dag.upstream[todo.pop()]:
                if u not in out:
                    out.add(u)
                    todo.append(u)
        return out
    stage = next(f"{group}@{variant}" for group in ("finetune", "distill") if f"{group}@{variant}" in dag.upstream)
    return (upstream(stage) | {stage}) - upstream(f"finetune@{BASELINE}")


def bench_cell(o: Outcome, project: Path, ref: str, dag: StageDag) -> dict:
    """One cell's numbers, as this benchmark reports them, from its experiment's files."""
    ev, seconds = o.metrics, o.record.get("stage_seconds", {})
    gm = read_from_experiment(project, ref, "metrics/gan.json")
    variants = [k for k, v in ev.items() if isinstance(v, dict) and "macro_f1" in v]
    n_classes = len(gm.get("per_class") or {}) or len(ev.get("vs_baseline", {}).get("per_class", {})) or 0
    out = {
        "dataset": o.cell.axes["dataset"], "shots": o.cell.axes["data.shots"], "seed": o.cell.seed,
        "n_real": o.cell.axes["data.shots"] * n_classes, "n_test": ev["n_test"], "n_synthetic": gm.get("n_synthetic"),
        "metrics": {v: {"accuracy": ev[v]["accuracy"], "macro_f1": ev[v]["macro_f1"]} for v in variants},
        "vs_baseline": ev.get("vs_baseline", {}), "vs_classical": ev.get("vs_classical", {}),
        "stage_seconds": seconds,
        "variant_seconds": {v: round(sum(seconds.get(s, 0.0) for s in variant_stages(dag, v)), 2) for v in variants},
        "seconds": o.record.get("seconds"), "experiment": o.cell.name,
    }
    if gm.get("cas"):
        out["cas"] = {k: gm["cas"]["synthetic"][k] for k in ("accuracy", "macro_f1")}
    if gm.get("features"):
        out["gan_quality"] = {k: gm["features"][k] for k in ("kid", "fid", "precision", "recall")}
    meta = read_from_experiment(project, ref, "metrics/meta.json")  # gan.init meta: what meta-validation chose
    if "chosen" in meta:
        out["meta_chosen"] = meta["chosen"]
    return out


def run_grid(datasets: list[str], shots: list[int], seeds: list[int], overrides: dict, work: Path,
             workers: int, threads: int, cells_jsonl: Optional[Path] = None) -> dict:
    """Every cell of the grid through `ganaug sweep` (`pipeline/sweep.py`): a project made in `work/project`
    (params.yaml with `overrides`) whose cells are DVC experiments, run `workers` at a time, `threads` each; a
    `work` folder kept from a run cut short resumes it. {"cells", "skipped", "failed", "params", "seconds"}."""
    base = deep_update(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides)
    skipped = {}
    for d in datasets:
        try:
            scenario(d)
        except Skip as exc:
            skipped[d] = str(exc)
            print(f"uplift: skipping {d}: {exc}", flush=True)
    present = [d for d in datasets if d not in skipped]
    if not present:
        return {"cells": [], "skipped": skipped, "failed": {}, "params": base, "seconds": 0.0}
    project = work / "project"
    if not (project / ".git").is_dir():
        make_project(project, base)
    grid = Grid("uplift", tuple(present), {"data.shots": sorted(shots)}, tuple(seeds))
    t0 = time.perf_counter()
    outcomes = run_sweep(project, cells(grid, ROOT), LocalExecutor(str(project), workers, threads), tries=2,
                         log=lambda line: print(f"uplift: {line.strip()}", flush=True))
    refs, dag = head_experiments(project), read_dag(project)
    found = [bench_cell(o, project, refs[o.cell.name], dag) for o in outcomes if o.metrics]
    failed = {o.cell.name: (o.error.splitlines() or ["failed"])[-1] for o in outcomes if o.status == "failed"}
    for c in found:
        f1 = {v: round(m["macro_f1"], 3) for v, m in c["metrics"].items()}
        print(f"uplift: {c['dataset']} seed {c['seed']} shots {c['shots']}: macro-F1 {f1}", flush=True)
    if cells_jsonl:
        with open(cells_jsonl, "a") as f:
            f.writelines(json.dumps(c) + "\n" for c in found)
    return {"cells": found, "skipped": skipped, "failed": failed, "params": base,
            "seconds": round(time.perf_counter() - t0, 1)}


# ---------------------------------------------------------------- the report

def _delta(cells: list[dict], variant: str, ref: str, table: str, metric: str) -> str:
    """Mean delta with its 95% interval: over seeds (paired) with >= 2 seeds, else the test-set bootstrap."""
    if variant == ref or any(variant not in c[table] for c in cells):
        return "—"
    if len(cells) >= 2:
        m, h = mean_ci([c["metrics"][variant][metric] - c["metrics"][ref][metric] for c in cells])
        return fmt_delta(m, m - h, m + h)
    d = cells[0][table][variant][metric]
    return fmt_delta(d["delta"], d["ci95_low"], d["ci95_high"])


def _key(cell_or_row: dict) -> tuple:
    d = cell_or_row["dataset"]
    return (DATASETS.index(d) if d in DATASETS else len(DATASETS), d, cell_or_row["shots"])


def _variant_order(name: str) -> tuple:
    return (list(LABELS).index(name) if name in LABELS else len(LABELS), name)


def aggregate(cells: list[dict]) -> list[dict]:
    """One row per (dataset, shots, variant): means, intervals and deltas, formatted."""
    rows = []
    for key in sorted({_key(c) for c in cells}):
        group = sorted((c for c in cells if _key(c) == key), key=lambda c: c["seed"])
        for name in sorted(group[0]["metrics"], key=_variant_order):
            f1 = mean_ci([c["metrics"][name]["macro_f1"] for c in group])
            acc = mean_ci([c["metrics"][name]["accuracy"] for c in group])
            rows.append({
                "dataset": key[1], "shots": key[2], "variant": name, "seeds": len(group), "f1": f1[0],
                "macro_f1": fmt_ci(*f1), "accuracy": fmt_ci(*acc),
                "d_f1_base": _delta(group, name, BASELINE, "vs_baseline", "macro_f1"),
                "d_acc_base": _delta(group, name, BASELINE, "vs_baseline", "accuracy"),
                "d_f1_cls": _delta(group, name, CLASSICAL, "vs_classical", "macro_f1"),
                "d_acc_cls": _delta(group, name, CLASSICAL, "vs_classical", "accuracy"),
                "seconds": float(np.mean([c["variant_seconds"][name] for c in group])),
            })
    return rows


def reading(rows: list[dict]) -> list[str]:
    """Plain statements read off the tables (significant = the 95% interval excludes 0)."""
    lines = []
    for variant, col, label in [("gan", "d_f1_base", "real + GAN (default) vs real-only"),
                                ("gan", "d_f1_cls", "real + GAN (default) vs real + classical"),
                                ("source", "d_f1_base", "real + source relabelled vs real-only"),
                                ("gan_source", "d_f1_base", "real + GAN + source vs real-only"),
                                ("classical", "d_f1_base", "real + classical vs real-only"),
                                ("augmented", "d_f1_base", "ablation, hard-label mixing vs real-only")]:
        sel = [r for r in rows if r["variant"] == variant and r[col] != "—"]
        up = [f"{r['dataset']}/{r['shots']}" for r in sel if r[col].endswith("*") and r[col].startswith("+")]
        down = [f"{r['dataset']}/{r['shots']}" for r in sel if r[col].endswith("*") and r[col].startswith("-")]
        lines.append(f"- {label} (macro-F1): significantly better in {len(up)} of {len(sel)} cells"
                     f"{' (' + ', '.join(up) + ')' if up else ''}, significantly worse in {len(down)}"
                     f"{' (' + ', '.join(down) + ')' if down else ''}, not distinguishable in {len(sel) - len(up) - len(down)}.")
    for dataset, shots in dict.fromkeys((r["dataset"], r["shots"]) for r in rows):
        cell = [r for r in rows if (r["dataset"], r["shots"]) == (dataset, shots)]
        top = max(r["f1"] for r in cell)
        best = [LABELS.get(r["variant"], r["variant"]) for r in cell if r["f1"] == top]
        lines.append(f"- {dataset}, {shots} shots: highest mean macro-F1 {top:.3f}: {' = '.join(best)}.")
    return lines


def _budget(p: dict) -> str:
    synth = p["synth"]
    quota = f"{synth['ratio']} per real image" if synth.get("ratio") is not None else f"{synth['per_class']} per class"
    return (f"pretrain {p['classifier']['steps']} steps; GAN {p['gan']['steps']} steps (batch {p['gan']['batch_size']}, "
            f"widths {p['gan']['g_width']}/{p['gan']['d_width']}, init {p['gan'].get('init', 'scratch')}); synthesis {quota} "
            f"(filter {synth.get('filter', 'none')}); fine-tune {p['finetune']['steps']} steps (batch "
            f"{p['finetune']['batch_size']}); classical policy `{p['finetune']['augment']}` + random crop (padding size/8)")


def _stat(items: list[dict], key: str, digits: int = 3) -> str:
    return fmt_ci(*mean_ci([x[key] for x in items]), digits=digits) if items else "n/a"


def quality_table(cells: list[dict]) -> str:
    rows = []
    for key in sorted({_key(c) for c in cells}):
        cs = [c for c in cells if _key(c) == key]
        cas, q = [c["cas"] for c in cs if "cas" in c], [c["gan_quality"] for c in cs if "gan_quality" in c]
        stat = _stat
        rows.append([key[1], key[2], cs[0]["n_real"], cs[0]["n_synthetic"], cs[0]["n_test"], stat(cas, "accuracy"),
                     stat(cas, "macro_f1"), stat(q, "kid", 4), stat(q, "precision", 2), stat(q, "recall", 2),
                     f"{np.mean([c['stage_seconds'].get('train_gan', 0.0) for c in cs]):.0f}",
                     f"{np.mean([c['seconds'] for c in cs]):.0f}"])
    return markdown_table(["dataset", "shots", "real images", "synthetic images", "test images", "CAS accuracy",
                           "CAS macro-F1", "KID", "precision", "recall", "train_gan s", "dvc repro s"], rows)


def beyond_relabelling(cells: list[dict]) -> str:
    """real + GAN and real + GAN + source against real + source relabelled, per (dataset, shots), paired over seeds."""
    pairs = [("gan", "source"), ("gan_source", "source")]
    rows = []
    for key in sorted({_key(c) for c in cells}):
        group = [c for c in cells if _key(c) == key]
        if len(group) < 2 or any(v not in c["metrics"] for c in group for pair in pairs for v in pair):
            continue
        row = [key[1], key[2], len(group)]
        for a, b in pairs:
            m, h = mean_ci([c["metrics"][a]["macro_f1"] - c["metrics"][b]["macro_f1"] for c in group])
            row.append(fmt_delta(m, m - h, m + h))
        rows.append(row)
    return markdown_table(["dataset", "shots", "seeds", "real + GAN − real + source", "real + GAN + source − real + source"],
                          rows) if rows else ""


def render(run: dict, mode: str, command: str) -> str:
    rows, cells = aggregate(run["cells"]), run["cells"]
    n_seeds = max((r["seeds"] for r in rows), default=0)
    ci_note = ("mean ± 95% Student-t half-width over seeds; deltas paired over seeds" if n_seeds >= 2 else
               "one seed, so no interval over seeds; the deltas carry the `evaluate` stage's paired-bootstrap 95% "
               "interval over test images (test-set noise only, not shot-sampling or training noise)")
    out = [
        f"## Uplift{', full grid' if mode.startswith('full') else ''}: does GAN augmentation help? (`bench/uplift.py`)", "",
        f"- Command: `{command}`",
        f"- Mode: {mode}; run {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; total wall time "
        f"{run['seconds'] / 60:.1f} min ({run['workers']} pipeline(s) at a time, GANAUG_THREADS={run['threads']})",
        f"- Machine: {machine()}",
        f"- Budget, the same for every variant: {_budget(run['params'])}",
        f"- Intervals: {ci_note}. `*`: the 95% interval excludes 0.",
        "- wall s: what a variant costs beyond real-only's own upstream (prepare, pretrain), from `dvc repro`'s stage "
        "times: its fine-tuning, plus for the GAN variants GAN training, synthesis (which waits for the real-only "
        "model as its judge).",
    ]
    out += [f"- Skipped {d}: {why}" for d, why in run["skipped"].items()]
    out += [f"- **Failed** {what} (left out of every table): {why}" for what, why in run.get("failed", {}).items()]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        out += ["", f"### {dataset}", "", markdown_table(
            ["shots", "variant", "macro-F1", "accuracy", "Δ F1 vs real-only", "Δ acc vs real-only",
             "Δ F1 vs real+classical", "Δ acc vs real+classical", "wall s"],
            [[r["shots"], LABELS.get(r["variant"], r["variant"]), r["macro_f1"], r["accuracy"], r["d_f1_base"],
              r["d_acc_base"], r["d_f1_cls"], r["d_acc_cls"], f"{r['seconds']:.0f}"] for r in rows if r["dataset"] == dataset])]
    if cells:
        out += ["", "### GAN quality and cost per cell", "", quality_table(cells), "",
                "CAS: the pretrained classifier fine-tuned on the synthetic images only (same budget), accuracy on the "
                "real test set; KID, precision and recall: synthetic vs real test images in the pretrained classifier's "
                "feature space (`gan_metrics` stage, `metrics/gan.json`)."]
    beyond = beyond_relabelling(cells)
    if beyond:
        out += ["", "### What the GAN adds beyond relabelling source images", "", beyond, "",
                "Δ macro-F1, paired over seeds (`*`: the 95% interval excludes 0). A user who already has the source "
                "images gets the `source` variant without training a GAN."]
    out += ["", "### Reading (generated from the numbers above)", "", *reading(rows)]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- the grid as a plot

_LOG_CELL = re.compile(r"^uplift: (\S+) seed (\d+) shots (\d+): macro-F1 (\{.*\})")
PLOT_VARIANTS = ("classical", "gan", "source", "gan_source")  # the ablation (-4 to -23 points) would flatten the rest


def load_cells(sources: list) -> list[dict]:
    """Cells from raw JSON files (`--raw`), `.log` files of per-seed lines (`uplift: <dataset> seed <s> shots <n>:
    macro-F1 {...}`, as a run prints them) or lists of cells; a (dataset, shots, seed) seen once is not read again."""
    cells, seen = [], set()
    for src in sources:
        if isinstance(src, (list, tuple)):
            found = list(src)
        elif str(src).endswith(".log"):
            found = []
            for line in Path(src).read_text().splitlines():
                m = _LOG_CELL.match(line)
                if m:
                    f1 = ast.literal_eval(m.group(4))  # a dict of floats, as printed
                    found.append({"dataset": m.group(1), "seed": int(m.group(2)), "shots": int(m.group(3)),
                                  "metrics": {k: {"macro_f1": float(v)} for k, v in f1.items()}})
        else:
            found = json.loads(Path(src).read_text())["cells"]
        for c in found:
            key = (c["dataset"], c["shots"], c["seed"])
            if key not in seen:
                seen.add(key)
                cells.append(c)
    return cells


def uplift_points(cells: list[dict], variants=PLOT_VARIANTS) -> list[dict]:
    """Per (dataset, shots, variant): Δ macro-F1 against real-only, mean and 95% paired Student-t interval over
    seeds (`bench.common.mean_ci`, as the tables compute it), and the number of seeds."""
    points = []
    for key in sorted({_key(c) for c in cells}):
        group = [c for c in cells if _key(c) == key]
        for v in variants:
            diffs = [c["metrics"][v]["macro_f1"] - c["metrics"][BASELINE]["macro_f1"] for c in group if v in c["metrics"]]
            if diffs:
                m, h = mean_ci(diffs)
                points.append({"dataset": key[1], "shots": key[2], "variant": v, "delta": m,
                               "half": h, "seeds": len(diffs)})
    return points


def plot_uplift(cells_or_sources: list, png_path: Path, variants=PLOT_VARIANTS) -> list[dict]:
    """Draw each variant's Δ macro-F1 against real-only with its 95% paired interval, one panel per dataset and one
    group per shot count, to `png_path`; returns the plotted points. Takes cells or paths (see `load_cells`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = load_cells([cells_or_sources] if cells_or_sources and isinstance(cells_or_sources[0], dict)
                       else cells_or_sources)
    points = uplift_points(cells, variants)
    datasets = list(dict.fromkeys(p["dataset"] for p in points))
    titles = {"fashion": "Fashion-MNIST 0-4 -> 5-9", "digits": "digits 0-4 -> 5-9", "mnist_usps": "MNIST -> USPS",
              "mnist04": "MNIST 0-4 -> 5-9", "fashion_rev": "Fashion-MNIST 5-9 -> 0-4"}
    colors = {"classical": "tab:gray", "gan": "tab:red", "source": "tab:blue", "gan_source": "tab:purple",
              "augmented": "tab:olive"}
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.8), sharey=True, squeeze=False)
    width = 0.8 / max(len(variants), 1)
    for ax, dataset in zip(axes[0], datasets):
        shots = sorted({p["shots"] for p in points if p["dataset"] == dataset})
        for i, v in enumerate(variants):
            for j, n in enumerate(shots):
                p = next((q for q in points if (q["dataset"], q["shots"], q["variant"]) == (dataset, n, v)), None)
                if p is None:
                    continue
                x = j - 0.4 + width * (i + 0.5)
                clear = p["half"] is not None and abs(p["delta"]) > p["half"]
                ax.errorbar(x, p["delta"] * 100, yerr=None if p["half"] is None else p["half"] * 100,
                            fmt="o", mfc=colors.get(v, "k") if clear else "white",
                            color=colors.get(v, "k"), capsize=3, ms=5,
                            label=LABELS.get(v, v) if j == 0 else None)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(shots)), [f"{n} shots\n({max(q['seeds'] for q in points if q['dataset'] == dataset and q['shots'] == n)} seeds)"
                                          for n in shots])
        ax.set_title(titles.get(dataset, dataset), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("Δ macro-F1 vs real-only (points)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(variants), fontsize=8, frameon=False)
    fig.suptitle("Δ macro-F1 against real-only, mean and 95% paired t-interval over seeds "
                 "(filled: the interval excludes 0)", fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return points


# ---------------------------------------------------------------- command line

def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"seeds {QUICK['seeds']}, shots {QUICK['shots']}")
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS + DEV_DATASETS)
    ap.add_argument("--shots", nargs="+", type=int, help="shots per class (default: the mode's)")
    ap.add_argument("--seeds", nargs="+", type=int, help="seeds (default: the mode's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override params.yaml in every cell, e.g. --set gan.steps=500 "
                         "(a ratio sweep: --set synth.per_class=null --set synth.ratio=5)")
    cores = usable_cores()
    ap.add_argument("--jobs", type=int, default=cores, help="pipelines run at a time (default: the usable cores)")
    ap.add_argument("--threads", type=int, help="GANAUG_THREADS of the stages (default: cores // jobs, at least 1)")
    ap.add_argument("--out", type=Path, default=DOC, help="markdown file whose `uplift` section (`uplift_full` for the full grid) is (re)written")
    ap.add_argument("--raw", type=Path, help="also write every cell's numbers as JSON here")
    ap.add_argument("--cells-jsonl", type=Path, help="append each cell to this file as one JSON line")
    ap.add_argument("--work", type=Path, help="keep the project copy in this folder (default: a temporary one, "
                    "removed); the same command with the same folder resumes a grid cut short")
    args = ap.parse_args(argv)
    mode = QUICK if args.quick else FULL
    args.mode = "quick" if args.quick else ("full" if not (args.shots or args.seeds) else "custom")
    args.shots, args.seeds = args.shots or mode["shots"], args.seeds or mode["seeds"]
    args.threads = args.threads or max(1, cores // max(args.jobs, 1))
    return args


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    overrides = parse_overrides(args.overrides)
    work = args.work or Path(tempfile.mkdtemp(prefix="ganaug-uplift-"))
    try:
        run = run_grid(args.datasets, args.shots, args.seeds, overrides, work, args.jobs, args.threads, args.cells_jsonl)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    run.update(workers=args.jobs, threads=args.threads)
    mode = f"{args.mode} (seeds {args.seeds}, shots {args.shots}, datasets {', '.join(args.datasets)})"
    body = render(run, mode, command_line())
    # the full grid gets its own section, so that a full run does not replace the quick-mode tables
    publish(args.out, "uplift_full" if args.mode == "full" else "uplift", body, args.raw, run)
    return run


if __name__ == "__main__":
    main()
