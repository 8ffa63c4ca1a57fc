"""`ganaug sample` and `ganaug evaluate`: the pipeline's artifacts used outside the pipeline.

Both call the same core functions as the stages (`ganaug/tools/synthesis.py`,
`ganaug/judge/evaluation.py`), so a tree written by `ganaug sample` is what
`synthesize` would write for the same settings, and `ganaug evaluate` writes
the `evaluate` stage's report, metrics and plots under `--out`.

    ganaug sample --gan models/gan.pt --per-class 50 --out samples/
    ganaug sample --gan models/other_kind.pt --shots data/prepared/target_train.npz --out samples/
    ganaug evaluate models/finetune/baseline.pt models/finetune/gan.pt --test my_test_set/ --out eval/

User mistakes (missing files, wrong classes, bad settings) end in one line and exit 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from ganaug.config.errors import DataError, UserError, one_line
from ganaug.config.params import EvalParams, SynthParams

if TYPE_CHECKING:
    from ganaug.io.data import ImageSet

# The commands import torch and scikit-learn when they run, not when `ganaug` builds its parser: `ganaug run`
# (and every flow run a Prefect worker starts) would otherwise pay about 3 s for them.


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The `sample` and `evaluate` subcommands of the `ganaug` CLI."""
    s = sub.add_parser("sample", help="images per class from a trained generator, as an ImageFolder tree with its manifest")
    s.add_argument("--gan", "--checkpoint", dest="gan", required=True, type=Path,
                   help="a generator checkpoint of any kind (models/gan.pt: the GAN train_gan writes)")
    s.add_argument("--shots", type=Path, default=None,
                   help="the real shots a conditioned generator kind draws from: an .npz of x, y, class_names "
                        "(as data/prepared/target_train.npz); the GAN needs none")
    s.add_argument("--out", required=True, type=Path, help="folder to write (replaced as a whole)")
    s.add_argument("--per-class", type=int, default=10, help="images per class (default 10)")
    s.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    s.add_argument("--generator", default="ema", help="ema | average | raw (default ema)")
    s.add_argument("--truncation", type=float, default=None, help="truncation trick threshold (default off)")
    s.add_argument("--batch-size", type=int, default=256)

    e = sub.add_parser("evaluate", help="classifiers on a test set: the evaluate stage's metrics, report and plots")
    e.add_argument("models", nargs="+", type=Path, help="classifier checkpoints; the file stem names the variant")
    e.add_argument("--test", required=True, help="test set: an .npz, an ImageFolder folder (a ganaug tree is read "
                                                 "through its manifest) or 'digits'; classes matched by name")
    e.add_argument("--out", type=Path, default=Path("."), help="writes metrics/, reports/ and plots/ here (default .)")
    e.add_argument("--batch-size", type=int, default=512)


def _settings(cls, **values):
    try:
        return cls(**values)
    except ValidationError as exc:
        raise UserError("; ".join(f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}"
                                  if e["loc"] else str(e["msg"]) for e in exc.errors())) from None


def cmd_sample(args: argparse.Namespace) -> int:
    from ganaug.io.data import load_prepared
    from ganaug.tools.synthesis import synthesize
    from ganaug.train.runtime import pick_device

    p = _settings(SynthParams, per_class=args.per_class, ratio=None, seed=args.seed, generator=args.generator,
                  truncation=args.truncation, batch_size=args.batch_size)
    shots = load_prepared(args.shots) if args.shots is not None else None
    df = synthesize(args.gan, p, args.out, args.out / "samples.png", pick_device(), real=shots)
    print(f"ganaug sample: {len(df)} images ({args.per_class} per class, {p.generator} generator, seed {p.seed}) "
          f"-> {args.out} (manifest.parquet, samples.png)")
    return 0


def load_test_set(spec: str, class_names: list[str], image_size: int, channels: int) -> ImageSet:
    """`spec` loaded at the classifier's size, restricted to and ordered by the classifier's classes (by name)."""
    from ganaug.io.data import LoadOptions, load_dataset, load_manifest_set, resolve_classes, select_classes
    from ganaug.io.imagefolder import MANIFEST

    opts = LoadOptions(image_size, channels)
    path = Path(spec)
    ds = load_manifest_set(path, opts) if (path / MANIFEST).is_file() else load_dataset(spec, opts)["train"]
    missing = [c for c in class_names if c not in ds.class_names]
    if missing:
        raise DataError(f"{spec}: has no class(es) {missing} of the classifier (it has {ds.class_names})")
    return select_classes(ds, resolve_classes(ds, class_names, f"{spec} classes"))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ganaug.judge.evaluation import compare, compare_classical, evaluate, write_outputs
    from ganaug.nets.classifier import load_classifier
    from ganaug.train.runtime import pick_device

    p = _settings(EvalParams, batch_size=args.batch_size)
    _, cfg, names = load_classifier(args.models[0])
    test = load_test_set(args.test, names, cfg.image_size, cfg.channels)
    results, preds = evaluate({m.stem: m for m in args.models}, test, p, pick_device())
    deltas = compare(results, preds, test)
    write_outputs(results, deltas, test, args.out, vs_classical=compare_classical(results, preds, test))
    print((args.out / "reports/eval.md").read_text(), end="")
    print(f"ganaug evaluate: metrics in {args.out / 'metrics/eval.json'}, plots in {args.out / 'plots'}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run `sample` or `evaluate`; a UserError is one line on stderr and exit code 2."""
    try:
        return cmd_sample(args) if args.command == "sample" else cmd_evaluate(args)
    except UserError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
