"""Stage `evaluate`: accuracy and macro-F1 of every fine-tuned variant on the held-out real test set.

Writes `metrics/eval.json` (DVC metrics: per variant accuracy and macro-F1,
and for each variant its difference from `baseline` with a paired-bootstrap
95% interval), `reports/eval.md` (the same in words, including "synthetic data
did not help" when that is what the numbers say), `reports/per_class.csv`, and
a confusion matrix per variant as PNG and as a DVC confusion plot (CSV).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from stages.atomic import atomic_file, write_json
from stages.classifier_model import load_classifier
from stages.data import ImageSet, load_prepared, to_float
from stages.errors import UserError, exit_on_user_error
from stages.fit import predict
from stages.metrics import bootstrap_delta, classification_metrics, save_confusion_png
from stages.params import EvalParams, load_params
from stages.runtime import pick_device

BASELINE = "baseline"


def verdict(name: str, delta: float, lo: float, hi: float) -> str:
    if lo > 0:
        return f"{name} helped: macro-F1 {delta:+.3f} over baseline (95% CI {lo:+.3f} to {hi:+.3f})."
    if hi < 0:
        return f"{name} hurt: macro-F1 {delta:+.3f} against baseline (95% CI {lo:+.3f} to {hi:+.3f})."
    return (f"{name} did not clearly help: macro-F1 {delta:+.3f} against baseline, "
            f"95% CI {lo:+.3f} to {hi:+.3f} includes 0.")


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


def compare(results: dict, preds: dict, test: ImageSet) -> dict:
    """Each variant minus baseline, with a paired-bootstrap 95% interval."""
    if BASELINE not in preds:
        return {}
    out = {}
    for name in preds:
        if name == BASELINE:
            continue
        ci = bootstrap_delta(test.y, preds[BASELINE], preds[name], len(test.class_names))
        out[name] = {m: {"delta": results[name][m] - results[BASELINE][m], **ci[m]} for m in ("accuracy", "macro_f1")}
    return out


def write_outputs(results: dict, deltas: dict, test: ImageSet, out: Path = Path(".")) -> None:
    summary = {n: {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"]} for n, r in results.items()}
    summary["vs_baseline"] = deltas
    summary["n_test"] = len(test)
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
        tmp.write_text(render_report(results, deltas, test))


def render_report(results: dict, deltas: dict, test: ImageSet) -> str:
    lines = ["# ganaug evaluation", "", f"Held-out real test set: {len(test)} images, {len(test.class_names)} classes.", "",
             "| variant | accuracy | macro-F1 |", "|---|---|---|"]
    lines += [f"| {n} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} |" for n, r in results.items()]
    lines += [""]
    for name, d in deltas.items():
        f1 = d["macro_f1"]
        lines.append("- " + verdict(name, f1["delta"], f1["ci95_low"], f1["ci95_high"]))
    return "\n".join(lines) + "\n"


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("models", nargs="+", type=Path, help="fine-tuned classifiers; the file stem names the variant")
    args = ap.parse_args(argv)
    p = load_params().eval
    test = load_prepared("data/prepared/target_test.npz")
    results, preds = evaluate({m.stem: m for m in args.models}, test, p, pick_device())
    deltas = compare(results, preds, test)
    write_outputs(results, deltas, test)
    for n, r in results.items():
        print(f"evaluate[{n}]: accuracy {r['accuracy']:.4f}, macro-F1 {r['macro_f1']:.4f}")
    print("evaluate: report in reports/eval.md, metrics in metrics/eval.json, plots in plots/")


if __name__ == "__main__":
    main()
