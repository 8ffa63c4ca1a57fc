"""The uplift grid as a plot: each variant's Δ macro-F1 against real-only with its 95% paired interval, per cell.

    .venv/bin/python -m bench.plot_uplift bench/results/uplift_10shot_teacher_seeds3.json -o docs/img/uplift_grid.png

Reads the raw per-seed cells that `bench.uplift --raw` writes (and `.log` files of its per-seed lines);
the intervals are those of bench/uplift.py's tables (`bench.common.mean_ci` over the paired per-seed differences).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.plot_uplift", description=__doc__.split("\n\n")[0])
    ap.add_argument("raw", nargs="+", type=Path, help="raw JSON files of bench.uplift (--raw), or .log files of its lines")
    ap.add_argument("-o", "--out", type=Path, default=Path("docs/img/uplift_grid.png"), help="PNG to write")
    ap.add_argument("--variants", nargs="+", default=None,
                    help="variants to draw (default: classical gan source gan_source; `augmented` is the ablation)")
    return ap


def main(argv: Optional[list[str]] = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    from bench.uplift import LABELS, PLOT_VARIANTS, plot_uplift

    points = plot_uplift([str(p) for p in args.raw], args.out, tuple(args.variants or PLOT_VARIANTS))
    for p in points:
        half = "" if p["half"] is None else f" ± {p['half']:.3f}"
        print(f"{p['dataset']:<11} {p['shots']:>3} shots  {LABELS.get(p['variant'], p['variant']):<28} "
              f"{p['delta']:+.3f}{half}  ({p['seeds']} seeds)")
    print(f"wrote {args.out}")
    return points


if __name__ == "__main__":
    main()
