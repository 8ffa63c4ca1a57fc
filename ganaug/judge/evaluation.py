"""Evaluation: fine-tuned classifiers on a held-out real test set, compared with paired-bootstrap intervals.

Shared by the `evaluate` stage and `ganaug evaluate`. `write_outputs` writes,
under a root folder: `metrics/eval.json` (per variant accuracy and macro-F1;
under `vs_baseline` each variant's difference from `baseline` and under
`vs_classical` each other variant's difference from `classical`, with
paired-bootstrap 95% intervals; the recommendation), `reports/eval.md` (the same
in words), `reports/per_class.csv`, and a confusion matrix per variant as PNG
and as a DVC confusion plot (CSV).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ganaug.config.errors import UserError
from ganaug.config.params import EvalParams
from ganaug.io.atomic import atomic_file, write_json
from ganaug.io.data import ImageSet, to_float
from ganaug.judge.metrics import bootstrap_delta, classification_metrics, save_confusion_png
from ganaug.judge.verdicts import BASELINE, CLASSICAL, recommendation, verdicts
from ganaug.nets.classifier import load_classifier
from ganaug.train.fit import predict


def evaluate(models: dict[str, Path], test: ImageSet, p: EvalParams, device) -> tuple[dict, dict]:
    """(metrics per variant, predictions per variant) on `test`."""
    x = to_float(test.x)
    results, preds = {}, {}
    for name, path in models.items():
        model, _, class_names = load_classifier(path)
        if class_names != test.class_names:
            raise UserError(f"{path}: trained for classes {class_names}, test set has {test.class_names}")
        preds[name] = predict(model, x, p.batch_size, device).argmax(1).numpy()
        results[name] = classification_metrics(test.y, preds[name], test.class_names)
    return results, preds


def compare(results: dict, preds: dict, test: ImageSet, ref: str = BASELINE,
            skip: tuple[str, ...] = ()) -> dict:
    """Each variant (but `ref` and `skip`) minus `ref`, with a paired-bootstrap 95% interval; {} without `ref`."""
    if ref not in preds:
        return {}
    out = {}
    for name in preds:
        if name == ref or name in skip:
            continue
        ci = bootstrap_delta(test.y, preds[ref], preds[name], len(test.class_names))
        out[name] = {m: {"delta": results[name][m] - results[ref][m], **ci[m]} for m in ("accuracy", "macro_f1")}
    return out


def compare_classical(results: dict, preds: dict, test: ImageSet) -> dict:
    """The GAN variants minus `classical` (is a GAN worth it over classical augmentation alone?)."""
    return compare(results, preds, test, ref=CLASSICAL, skip=(BASELINE,))


def write_outputs(results: dict, deltas: dict, test: ImageSet, out: Path = Path("."),
                  vs_classical: dict | None = None) -> None:
    summary = {n: {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"]} for n, r in results.items()}
    summary["vs_baseline"] = deltas
    if vs_classical:
        summary["vs_classical"] = vs_classical
    summary["n_test"] = len(test)
    summary["recommendation"] = recommendation(deltas)
    write_json(out / "metrics/eval.json", summary)
    rows = [{"variant": n, "class": c, **v} for n, r in results.items() for c, v in r["per_class"].items()]
    with atomic_file(out / "reports/per_class.csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    for name, r in results.items():
        cm = np.asarray(r["confusion"])
        with atomic_file(out / f"plots/confusion_{name}.png") as tmp:
            save_confusion_png(cm, test.class_names, tmp, f"{name}: macro-F1 {r['macro_f1']:.3f}")
        pairs = [(test.class_names[i], test.class_names[j]) for (i, j), v in np.ndenumerate(cm) for _ in range(v)]
        with atomic_file(out / f"plots/confusion_{name}.csv") as tmp:
            pd.DataFrame(pairs, columns=["actual", "predicted"]).to_csv(tmp, index=False)
    with atomic_file(out / "reports/eval.md") as tmp:
        tmp.write_text(render_report(results, deltas, test, vs_classical or {}))


def best_line(results: dict, deltas: dict) -> str:
    """Which variant has the highest macro-F1, and whether its lead over baseline is beyond noise."""
    best = max(results, key=lambda n: results[n]["macro_f1"])  # on a tie, the first listed (baseline first)
    line = f"Best macro-F1: {best} ({results[best]['macro_f1']:.4f})"
    if best == BASELINE:
        return line + "; no variant beat the real-only baseline."
    if best not in deltas:
        return line + "."
    f1 = deltas[best]["macro_f1"]
    sure = "beyond" if f1["ci95_low"] > 0 else "within"
    return line + (f", {f1['delta']:+.4f} over {BASELINE}, {sure} the 95% bootstrap interval "
                   f"({f1['ci95_low']:+.4f} to {f1['ci95_high']:+.4f}).")


def render_report(results: dict, deltas: dict, test: ImageSet, vs_classical: dict | None = None) -> str:
    lines = ["# ganaug evaluation", "", f"Held-out real test set: {len(test)} images, {len(test.class_names)} classes.", "",
             "| variant | accuracy | macro-F1 |", "|---|---|---|"]
    lines += [f"| {n} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} |" for n, r in results.items()]
    lines += ["", best_line(results, deltas), "", recommendation(deltas), ""]
    for ref, table in ((BASELINE, deltas), (CLASSICAL, vs_classical or {})):
        lines += ["- " + v for v in verdicts(table, ref)]
    return "\n".join(lines) + "\n"
