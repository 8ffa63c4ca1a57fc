"""The datasheet of a published dataset: what made it, what is in it, how it was judged.

`build_datasheet` gathers it as one JSON-able dict (`datasheet.json`) and
`render_datasheet` writes the same in words (`datasheet.md`); the `concat`
stage puts both inside `data/augmented/`, written atomically with the images.
Pure functions: the stage reads the files and passes their contents in.
"""
from __future__ import annotations

from typing import Any, Optional

import pandas as pd

from ganaug.judge.verdicts import BASELINE, CLASSICAL, recommendation, verdicts

SCHEMA = "ganaug-datasheet/1"


def class_counts(df: pd.DataFrame, class_names: list[str], folders: list[str]) -> list[dict[str, Any]]:
    """One row per class, in label order: label, name, folder, and images per origin."""
    by = df.groupby(["label", "origin"]).size()
    return [{"label": k, "name": name, "folder": folder,
             "real": int(by.get((k, "real"), 0)), "synthetic": int(by.get((k, "synthetic"), 0))}
            for k, (name, folder) in enumerate(zip(class_names, folders))]


def evaluation_summary(ev: Optional[dict]) -> Optional[dict[str, Any]]:
    """The evaluate stage's metrics/eval.json as the datasheet states it: scores, intervals, verdicts in words."""
    if ev is None:
        return None
    names = sorted((n for n, v in ev.items() if isinstance(v, dict) and "macro_f1" in v),
                   key=lambda n: (n != BASELINE, n != CLASSICAL, n))  # the references first
    variants = {n: {"accuracy": ev[n]["accuracy"], "macro_f1": ev[n]["macro_f1"]} for n in names}
    vs_base, vs_cls = ev.get("vs_baseline", {}), ev.get("vs_classical", {})
    return {"n_test": ev.get("n_test"), "variants": variants, "vs_baseline": vs_base, "vs_classical": vs_cls,
            "verdicts": verdicts(vs_base, BASELINE) + verdicts(vs_cls, CLASSICAL),
            "recommendation": ev.get("recommendation") or recommendation(vs_base)}


def build_datasheet(df: pd.DataFrame, class_names: list[str], folders: list[str], made_by: dict[str, Any],
                    synthesis: Optional[dict], gan_metrics: Optional[dict], evaluation: Optional[dict]) -> dict:
    """Everything `datasheet.json` holds. `made_by`: params, git revision, inputs and their sha256."""
    syn = df[df["origin"] == "synthetic"]
    shas = sorted(syn["generator_sha256"].dropna().unique().tolist())
    seeds = sorted(int(s) for s in syn["seed"].dropna().unique())
    return {
        "schema": SCHEMA,
        "made_by": {**made_by, "generator_sha256": shas[0] if len(shas) == 1 else shas or None,
                    "synthesis_seed": seeds[0] if len(seeds) == 1 else seeds or None},
        "contents": {"images": len(df), "real": int((df["origin"] == "real").sum()), "synthetic": len(syn),
                     "classes": class_counts(df, class_names, folders)},
        "judged": {"synthesis": synthesis, "gan_metrics": gan_metrics, "evaluation": evaluation_summary(evaluation)},
        "files": {"manifest": "manifest.parquet", "hf_metadata": "metadata.jsonl",
                  "layout": "<folder>/<real|syn>_<i>.png; folders sort in label order"},
    }


def _cell(value: Any) -> str:
    """A markdown table cell: user text (class names) cannot break the table."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _made_by_lines(m: dict) -> list[str]:
    lines = [f"- git revision: `{m.get('git_revision') or 'unknown (not a git checkout)'}`",
             f"- generator checkpoint sha256: `{m.get('generator_sha256')}`, synthesis seed {m.get('synthesis_seed')}"]
    for role, item in m.get("inputs", {}).items():
        lines.append(f"- {role}: `{_cell(item.get('spec'))}`, prepared file sha256 `{item.get('sha256')}`")
    lines.append("- params: the whole `params.yaml` of the run is under `made_by.params` in datasheet.json")
    return lines


def _judged_lines(judged: dict) -> list[str]:
    lines = []
    syn = judged.get("synthesis") or {}
    if syn:
        memo = syn.get("memorisation") or {}
        lines.append(f"- Filter `{syn.get('filter')}`: quota met {syn.get('quota_met')}, shortfall {syn.get('shortfall')}; "
                     f"copies dropped: {memo.get('exact_copies', 'n/a')} exact, {memo.get('near_copies_dropped', 'n/a')} near.")
    gm = judged.get("gan_metrics") or {}
    if gm.get("cas"):
        f, c = gm["features"], gm["cas"]
        lines.append(f"- GAN metrics: CAS accuracy {c['synthetic']['accuracy']:.3f} (real-trained {c['real']['accuracy']:.3f}), "
                     f"KID {f['kid']:.4f}, precision {f['precision']:.3f}, recall {f['recall']:.3f}.")
    ev = judged.get("evaluation")
    if ev is None:
        return lines + ["- Not evaluated."]
    lines += ["", f"Fine-tuned classifiers on the held-out real test set ({ev['n_test']} images):", "",
              "| variant | accuracy | macro-F1 |", "|---|---|---|"]
    lines += [f"| {n} | {v['accuracy']:.4f} | {v['macro_f1']:.4f} |" for n, v in ev["variants"].items()]
    return lines + ["", *(f"- {v}" for v in ev["verdicts"]), "", f"**{ev['recommendation']}**"]


def render_datasheet(sheet: dict) -> str:
    """`datasheet.md`: the datasheet in words."""
    c = sheet["contents"]
    lines = ["# Datasheet: ganaug augmented dataset", "",
             f"{c['images']} images: {c['real']} real target shots and {c['synthetic']} synthetic images "
             "(ImageFolder layout; `manifest.parquet` and `metadata.jsonl` list every file with its label and origin).",
             "", "## What is in it", "", "| label | class | folder | real | synthetic |", "|---|---|---|---|---|"]
    lines += [f"| {r['label']} | {_cell(r['name'])} | `{r['folder']}` | {r['real']} | {r['synthetic']} |" for r in c["classes"]]
    lines += ["", "## What made it", "", *_made_by_lines(sheet["made_by"]),
              "", "## How it was judged", "", *_judged_lines(sheet["judged"])]
    return "\n".join(lines) + "\n"
