"""The datasheet of a published dataset: what made it, what is in it, how it was judged.

`build_datasheet` gathers it as one JSON-able dict (`datasheet.json`) and
`render_datasheet` writes the same in words (`datasheet.md`); the `concat`
stage puts both inside `data/augmented/`, written atomically with the images.
Pure functions: the stage reads the files and passes their contents in.
"""
from __future__ import annotations

from typing import Any, Optional

import pandas as pd

from ganaug.io.imagefolder import MANIFEST_SCHEMA
from ganaug.judge.verdicts import BASELINE, CLASSICAL, recommendation, verdicts

SCHEMA = "ganaug-datasheet/2"


ORIGINS = ("real", "synthetic", "source")
HARD_VIEW_MEASURED = (
    "Measured on the development scenarios (10 shots, 5 paired seeds, `bench/consumer.py`, docs/downstream.md): "
    "a hard-label consumer trained on every generated image with the class it was made for lost 7.7 and 4.0 "
    "macro-F1 points against the shots alone; trained on these class folders it matches the shots alone; the "
    "soft-label recipe was ahead by +0.9 and +0.4 points on average, within its seed-to-seed spread.")


def class_counts(df: pd.DataFrame, class_names: list[str], folders: list[str]) -> list[dict[str, Any]]:
    """One row per class, in label order: label, name, folder, images per origin in its folder (the hard-label
    view) and the teacher's most likely class over all published images (`teacher_<origin>`)."""
    label = df["label"] if "hard_view" not in df else df["label"].where(df["hard_view"])
    by = df.assign(_label=label).groupby(["_label", "origin"]).size()
    top = df.groupby(["teacher_label", "origin"]).size() if "teacher_label" in df else None
    rows = []
    for k, (name, folder) in enumerate(zip(class_names, folders)):
        row = {"label": k, "name": name, "folder": folder, **{o: int(by.get((k, o), 0)) for o in ORIGINS}}
        if top is not None:
            row.update({f"teacher_{o}": int(top.get((k, o), 0)) for o in ORIGINS})
        rows.append(row)
    return rows


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
                    synthesis: Optional[dict], gan_metrics: Optional[dict], evaluation: Optional[dict],
                    teacher: Optional[dict] = None, publish: Optional[dict] = None) -> dict:
    """Everything `datasheet.json` holds. `made_by`: params, git revision, inputs and their sha256; `teacher`:
    the stream labels' teacher.json (temperature, files); `publish`: the publish params (hard-label rule)."""
    syn = df[df["origin"] == "synthetic"]
    shas = sorted(syn["generator_sha256"].dropna().unique().tolist())
    seeds = sorted(int(s) for s in syn["seed"].dropna().unique())
    in_view = df["hard_view"] if "hard_view" in df else pd.Series(True, index=df.index)
    return {
        "schema": SCHEMA,
        "made_by": {**made_by, "generator_sha256": shas[0] if len(shas) == 1 else shas or None,
                    "synthesis_seed": seeds[0] if len(seeds) == 1 else seeds or None, "teacher": teacher},
        "contents": {"images": len(df), **{o: int((df["origin"] == o).sum()) for o in ORIGINS},
                     "hard_view": {"images": int(in_view.sum()),
                                   **{o: int((in_view & (df["origin"] == o)).sum()) for o in ORIGINS}},
                     "classes": class_counts(df, class_names, folders)},
        "publish": publish,
        "judged": {"synthesis": synthesis, "gan_metrics": gan_metrics, "evaluation": evaluation_summary(evaluation)},
        "files": {"manifest": "manifest.parquet", "manifest_schema": MANIFEST_SCHEMA, "hf_metadata": "metadata.jsonl",
                  "layout": "<folder>/<real|syn>_<i>.png: the hard-label view, folders sort in label order; "
                            "syn_<i>.png, src_<i>.png at the top level: images outside it (soft labels only)"},
    }


def _cell(value: Any) -> str:
    """A markdown table cell: user text (class names) cannot break the table."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _made_by_lines(m: dict) -> list[str]:
    lines = [f"- git revision: `{m.get('git_revision') or 'unknown (not a git checkout)'}`",
             f"- generator checkpoint sha256: `{m.get('generator_sha256')}`, synthesis seed {m.get('synthesis_seed')}"]
    for role, item in m.get("inputs", {}).items():
        lines.append(f"- {role}: `{_cell(item.get('spec'))}`, prepared file sha256 `{item.get('sha256')}`")
    t = m.get("teacher")
    if t:
        lines.append(f"- teacher: the mean of {len(t['mean_of'])} classifiers fine-tuned on the real shots alone "
                     f"(variants {', '.join(t['variants'])}, seeds {', '.join(map(str, t['seeds']))}), "
                     f"probabilities at temperature {t['temperature']}:")
        lines += [f"  - `{f['file']}` ({f['variant']}, seed {f['seed']}): sha256 `{f['sha256']}`" for f in t["mean_of"]]
    lines.append("- params: the whole `params.yaml` of the run is under `made_by.params` in datasheet.json")
    return lines


def _soft_lines(sheet: dict) -> list[str]:
    """What the probabilities are, where the source images come from, and which rows the class folders hold."""
    c, p = sheet["contents"], sheet.get("publish") or {}
    t = sheet["made_by"].get("teacher") or {}
    src = sheet["made_by"].get("inputs", {}).get("source", {})
    lines = [f"Every image has `probs`, the teacher's probabilities over the target classes in label order at "
             f"temperature {t.get('temperature', 'n/a')} (one-hot for real shots): the labels fine-tuning used."]
    if c.get("source"):
        lines.append(f"The {c['source']} `source` images are the user's source set `{_cell(src.get('spec'))}` "
                     f"(classes {src.get('classes')}), images of other classes relabelled by the teacher; "
                     "`publish.source_images: false` leaves them out.")
    hv = c.get("hard_view", {})
    rule = ("the real shots alone" if p.get("hard_view") == "real" else
            f"the real shots and synthetic images whose teacher probability of their class is at least "
            f"{p.get('min_confidence')} (at most {p.get('max_per_shot')} per real shot)")
    lines += ["", f"The class folders (the hard-label view: `hard_view` true, read by torchvision `ImageFolder` and "
                  f"`datasets` imagefolder) hold {rule}: {hv.get('images', 0)} images ({hv.get('real', 0)} real, "
                  f"{hv.get('synthetic', 0)} synthetic). Images outside it lie at the top level with `label` empty; "
                  "train on them with their `probs` (docs/downstream.md)."]
    return lines + ["", HARD_VIEW_MEASURED]


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
             f"{c['images']} images: {c['real']} real target shots, {c.get('synthetic', 0)} synthetic images and "
             f"{c.get('source', 0)} relabelled source images (`manifest.parquet` and `metadata.jsonl` list every file "
             "with its origin and probabilities).", "", *_soft_lines(sheet),
             "", "## What is in it", "",
             "| label | class | folder | real | synthetic in folder | teacher's top class: synthetic | source |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['label']} | {_cell(r['name'])} | `{r['folder']}` | {r['real']} | {r['synthetic']} | "
              f"{r.get('teacher_synthetic', 'n/a')} | {r.get('teacher_source', 'n/a')} |" for r in c["classes"]]
    lines += ["", "## What made it", "", *_made_by_lines(sheet["made_by"]),
              "", "## How it was judged", "", *_judged_lines(sheet["judged"])]
    return "\n".join(lines) + "\n"
