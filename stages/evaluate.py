"""Stage `evaluate`: accuracy and macro-F1 of every fine-tuned variant on the held-out real test set.

Writes `metrics/eval.json` (DVC metrics: per variant accuracy and macro-F1;
under `vs_baseline` each variant's difference from `baseline` (real shots, no
augmentation) and under `vs_classical` each GAN variant's difference from
`classical` (real shots, classical augmentation), with paired-bootstrap 95%
intervals), `reports/eval.md` (the same in words: which variant is best, and
"did not clearly help" when that is what the numbers say),
`reports/per_class.csv`, and a confusion matrix per variant as PNG and as a DVC
confusion plot (CSV).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from ganaug.config.errors import UserError, exit_on_user_error
from ganaug.config.params import EvalParams, load_params
from ganaug.io.atomic import atomic_file, write_json
from ganaug.io.data import ImageSet, load_prepared, to_float
from ganaug.judge.metrics import bootstrap_delta, classification_metrics, save_confusion_png
from ganaug.nets.classifier import load_classifier
from ganaug.train.fit import predict
from ganaug.train.runtime import pick_device

BASELINE = "baseline"  # real shots, no augmentation
CLASSICAL = "classical"  # real shots, classical augmentation


def verdict(name: str, delta: float, lo: float, hi: float, ref: str = BASELINE) -> str:
    if lo > 0:
        return f"{name} helped: macro-F1 {delta:+.3f} over {ref} (95% CI {lo:+.3f} to {hi:+.3f})."
    if hi < 0:
        return f"{name} hurt: macro-F1 {delta:+.3f} against {ref} (95% CI {lo:+.3f} to {hi:+.3f})."
    return (f"{name} did not clearly help: macro-F1 {delta:+.3f} against {ref}, "
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


def recommendation(deltas: dict) -> str:
    """The variant to use on this data: the one with the highest lower interval bound over real-only, if above 0."""
    helped = {n: d["macro_f1"] for n, d in deltas.items() if d["macro_f1"]["ci95_low"] > 0}
    if not helped:
        return (f"Recommendation: keep {BASELINE} (real shots only). No variant beat it with a 95% interval "
                "that excludes 0: on this data the synthetic or relabelled images did not clearly help.")
    name = max(helped, key=lambda n: helped[n]["ci95_low"])
    f1 = helped[name]
    return (f"Recommendation: use {name}: macro-F1 {f1['delta']:+.4f} over {BASELINE} (95% interval "
            f"{f1['ci95_low']:+.4f} to {f1['ci95_high']:+.4f}, the highest lower bound of the variants that helped). "
            "This interval covers test-set noise only; bench/uplift.py measures it over seeds.")


def render_report(results: dict, deltas: dict, test: ImageSet, vs_classical: dict | None = None) -> str:
    lines = ["# ganaug evaluation", "", f"Held-out real test set: {len(test)} images, {len(test.class_names)} classes.", "",
             "| variant | accuracy | macro-F1 |", "|---|---|---|"]
    lines += [f"| {n} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} |" for n, r in results.items()]
    lines += ["", best_line(results, deltas), "", recommendation(deltas), ""]
    for ref, table in ((BASELINE, deltas), (CLASSICAL, vs_classical or {})):
        for name, d in table.items():
            f1 = d["macro_f1"]
            lines.append("- " + verdict(name, f1["delta"], f1["ci95_low"], f1["ci95_high"], ref))
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
    write_outputs(results, deltas, test, vs_classical=compare_classical(results, preds, test))
    for n, r in results.items():
        print(f"evaluate[{n}]: accuracy {r['accuracy']:.4f}, macro-F1 {r['macro_f1']:.4f}")
    print("evaluate: report in reports/eval.md, metrics in metrics/eval.json, plots in plots/")


if __name__ == "__main__":
    main()
