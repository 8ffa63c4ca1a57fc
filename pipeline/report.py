"""The run's Prefect artifacts: a markdown report and a per-class F1 table.

They are built from what the stages wrote in the run's workspace:
`metrics/eval.json` (accuracy, macro-F1 and the delta against baseline),
`reports/per_class.csv` (per-class F1 of every variant) and
`data/augmented/manifest.parquet` (how many images are synthetic),
`metrics/restore.json` (damage and repair, when on), plus the
flow's own record of what DVC did with every stage and how long it took.
A file a (smaller) pipeline does not produce is reported as missing.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from pipeline.models import RunSummary
from pipeline.overrides import format_overrides

EVAL_JSON = Path("metrics/eval.json")
RESTORE_JSON = Path("metrics/restore.json")
PER_CLASS_CSV = Path("reports/per_class.csv")
MANIFEST = Path("data/augmented/manifest.parquet")
BASELINE = "baseline"
REPORT_KEY = "ganaug-report"
PER_CLASS_KEY = "ganaug-per-class-f1"


def read_eval(root: Path) -> Optional[dict[str, Any]]:
    path = root / EVAL_JSON
    return json.loads(path.read_text()) if path.is_file() else None


def synthetic_counts(root: Path) -> Optional[dict[str, int]]:
    """Images per origin (`real`, `synthetic`) in the augmented training set."""
    path = root / MANIFEST
    if not path.is_file():
        return None
    import pandas as pd  # here: a flow run of a project without the files never pays for the import

    counts = pd.read_parquet(path, columns=["origin"])["origin"].value_counts()
    return {"real": int(counts.get("real", 0)), "synthetic": int(counts.get("synthetic", 0))}


def per_class_f1(root: Path) -> Optional[list[dict[str, Any]]]:
    """One row per class: F1 of every variant and, for non-baseline variants, the delta to baseline."""
    path = root / PER_CLASS_CSV
    if not path.is_file():
        return None
    import pandas as pd

    df = pd.read_csv(path, dtype={"class": str})
    wide = df.pivot(index="class", columns="variant", values="f1")
    variants = list(df["variant"].drop_duplicates())
    rows = []
    for cls in df["class"].drop_duplicates():
        row: dict[str, Any] = {"class": cls}
        row.update({f"f1_{v}": round(float(wide.loc[cls, v]), 4) for v in variants})
        if BASELINE in variants:
            row.update({f"delta_{v}": round(float(wide.loc[cls, v] - wide.loc[cls, BASELINE]), 4)
                        for v in variants if v != BASELINE})
        rows.append(row)
    return rows


def render_markdown(summary: RunSummary, root: Path) -> str:
    """The run report: metrics, deltas, synthetic image count, what DVC did per stage."""
    where = f"DVC experiment `{summary.experiment}`" if summary.experiment else "project workspace"
    lines = ["# ganaug run report", "",
             f"- Project: `{summary.project}` ({where})",
             f"- Overrides: `{format_overrides(summary.overrides)}`",
             f"- Stages: {len(summary.ran)} ran, {len(summary.skipped)} skipped (DVC up to date or cached)",
             f"- Wall time: {summary.seconds:.1f} s", ""]
    lines += _metrics_section(read_eval(root))
    lines += _synthetic_section(synthetic_counts(root))
    lines += _restore_section(root / RESTORE_JSON)
    lines += ["## Stages", "", "| stage | DVC | wall time |", "|---|---|---|"]
    lines += [f"| {r.stage} | {r.outcome()} | {r.seconds:.1f} s |" for r in summary.stages]
    return "\n".join(lines) + "\n"


def _metrics_section(ev: Optional[dict[str, Any]]) -> list[str]:
    if ev is None:
        return ["## Metrics", "", f"No `{EVAL_JSON}` in this run's workspace.", ""]
    variants = {k: v for k, v in ev.items() if isinstance(v, dict) and "macro_f1" in v}
    variants = dict(sorted(variants.items(), key=lambda kv: kv[0] != BASELINE))  # baseline first
    out = ["## Metrics", ""]
    if "n_test" in ev:
        out += [f"Held-out real test set: {ev['n_test']} images.", ""]
    out += ["| variant | accuracy | macro-F1 |", "|---|---|---|"]
    out += [f"| {n} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} |" for n, m in variants.items()]
    out += [""]
    for name, d in (ev.get("vs_baseline") or {}).items():
        out.append(f"- Delta {name} - {BASELINE}: accuracy {_delta(d.get('accuracy'))}, "
                   f"macro-F1 {_delta(d.get('macro_f1'))}")
    if ev.get("recommendation"):
        out += ["", f"**{ev['recommendation']}**"]
    return out + [""]


def _delta(d: Optional[dict[str, float]]) -> str:
    if not d:
        return "n/a"
    ci = f" (95% CI {d['ci95_low']:+.4f} to {d['ci95_high']:+.4f})" if "ci95_low" in d else ""
    return f"{d['delta']:+.4f}{ci}"


def _synthetic_section(counts: Optional[dict[str, int]]) -> list[str]:
    if counts is None:
        return [f"Synthetic images: n/a (no `{MANIFEST}` in this run's workspace).", ""]
    return [f"Synthetic images in the augmented training set: {counts['synthetic']} "
            f"(plus {counts['real']} real).", ""]


def _restore_section(path: Path) -> list[str]:
    """Damage and repair (stage restore), when data.corrupt or restore.enabled was on; nothing otherwise."""
    m = json.loads(path.read_text()) if path.is_file() else None
    if not m or "downstream" not in m:
        return []
    out = ["## Restoration", "", f"Corruption `{m['corrupt']}` on {m['corrupt_on']}; the pipeline got "
           f"{m['feeds_pipeline']}.", "", "| treatment | macro-F1 | PSNR (dB) |", "|---|---|---|"]
    quality = m.get("quality", {})
    out += [f"| {t} | {d['macro_f1']:.4f} | {quality[t]['psnr']:.2f} |" if t in quality else
            f"| {t} | {d['macro_f1']:.4f} | n/a |" for t, d in m["downstream"].items()]
    return out + ["", f"**{m['verdict']}**", ""]


def publish(summary: RunSummary, root: Path) -> str:
    """Create both artifacts for the current flow run; return the markdown."""
    markdown = render_markdown(summary, root)
    create_markdown_artifact(markdown, key=REPORT_KEY, description="ganaug: metrics, deltas and stage timings")
    rows = per_class_f1(root)
    if rows:
        create_table_artifact(rows, key=PER_CLASS_KEY, description="ganaug: per-class F1 of every variant")
    return markdown
