"""Stage `evaluate`: accuracy and macro-F1 of every fine-tuned variant on the held-out real test set.

The core is `ganaug/judge/evaluation.py` (also behind `ganaug evaluate`). Writes
`metrics/eval.json` (DVC metrics: per variant accuracy and macro-F1; under
`vs_baseline` each variant's difference from `baseline` (real shots, no
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

from ganaug.config.errors import exit_on_user_error
from ganaug.config.params import load_params
from ganaug.io.data import load_prepared
from ganaug.judge.evaluation import compare, compare_classical, evaluate, write_outputs
from ganaug.train.runtime import pick_device


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("models", nargs="+", type=Path, help="fine-tuned classifiers; the file stem names the variant")
    args = ap.parse_args(argv)
    p = load_params().eval
    test = load_prepared("data/restored/target_test.npz")
    results, preds = evaluate({m.stem: m for m in args.models}, test, p, pick_device())
    deltas = compare(results, preds, test)
    write_outputs(results, deltas, test, vs_classical=compare_classical(results, preds, test))
    for n, r in results.items():
        print(f"evaluate[{n}]: accuracy {r['accuracy']:.4f}, macro-F1 {r['macro_f1']:.4f}")
    print("evaluate: report in reports/eval.md, metrics in metrics/eval.json, plots in plots/")


if __name__ == "__main__":
    main()
