"""What each generator lever gave on the development scenarios, from the raw per-seed files of its runs.

Every lever is one `bench.uplift` run (its `--set` below) whose raw cells are in bench/results/. For each
scenario and shot count: the default variant's teacher-labelled stream (`gan`, whatever the generator
kind) against relabelled source images (`source`, no generator), against real + classical with the
shipped policy (TrivialAugment) and with `crop` (the highest mean on the development scenarios,
bench/classical_policy.py), and what the generated images add on top of the relabelled ones
(`gan_source` − `source`). Δ macro-F1, mean over paired seeds with the 95% t-interval (`*`: it
excludes 0). The crop column pairs a cell with bench/results/classical_policy_dev.json only where
that file's real-only model is the cell's, bit for bit; elsewhere it is "—".

    .venv/bin/python -m bench.levers            # the table, then each lever's counts of clear wins and losses
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from bench.common import write_section
from pipeline.stats import fmt_delta, markdown_table, paired_delta

RESULTS = Path(__file__).resolve().parent / "results"
UPLIFT = ".venv/bin/python -m bench.uplift --datasets mnist04 fashion_rev --shots 10 --seeds 0 1 2 3 4 --jobs 2 --threads 1"


@dataclass(frozen=True)
class Lever:
    label: str
    settings: str       # the `--set` arguments of its bench.uplift run ("" for the defaults)
    raw: tuple[str, ...]  # its raw files in bench/results/


LEVERS = (
    Lever("GAN, scratch start (the default)", "", ("dev_mnist04_10_teacher_seeds3.json", "dev_fashion_rev_10_teacher_seeds3.json",
                                                   "dev_mnist04_5_20_default.json", "dev_fashion_rev_5_20_default.json")),
    Lever("GAN, meta-learned start", "--set gan.init=meta", ("dev_mnist04_10_meta.json", "dev_fashion_rev_10_meta.json")),
    Lever("GAN, 3,000 steps", "--set gan.steps=3000", ("dev_mnist04_10_gan_steps3000.json",)),
    Lever("GAN, mean of its last 5 checkpoints", "--set gan.average_last=5 --set synth.generator=average",
          ("dev_mnist04_10_average_generator.json",)),
    Lever("GAN, images filtered by the judge's confidence", "--set synth.filter=confidence",
          ("dev_mnist04_10_filter_confidence.json",)),
    Lever("GAN, stream's real batch with TrivialAugment", "--set finetune.real_augment=trivialaugment",
          ("dev_mnist04_10_real_augment.json", "dev_fashion_rev_10_real_augment.json")),
    Lever("GAN, 28x28 images", "--set data.image_size=28", ("dev_mnist04_10_image28.json",)),
    Lever("repair kind, strengths [0.3, 0.7]", "--set synth.kind=repair", ("dev_10_repair.json",)),
    Lever("repair kind, strengths [0.1, 0.4]", "--set synth.kind=repair --set \"repair.strengths=[0.1, 0.4]\"",
          ("dev_10_repair_low.json", "dev_5_20_repair_low.json")),
    Lever("dagan kind", "--set synth.kind=dagan", ("dev_10_dagan.json",)),
)
HEADER = ["lever", "scenario", "shots", "stream − `source`", "stream − classical (TrivialAugment)",
          "stream − classical (crop)", "`gan_source` − `source`", "raw cells"]


def f1(cell: dict, variant: str) -> float:
    return cell["metrics"][variant]["macro_f1"]


def delta(a: list[float], b: list[float]) -> tuple[str, Optional[int]]:
    """The formatted paired Δ and its sign: +1 / -1 when the interval excludes 0, 0 when not, None for one seed."""
    m, h = paired_delta(a, b)
    if h is None:
        return f"{m:+.3f}", None
    return fmt_delta(m, m - h, m + h), (1 if m - h > 0 else -1 if m + h < 0 else 0)


def crop_rows(path: Path) -> dict[tuple, dict[str, float]]:
    """(dataset, shots, seed) -> {policy: macro-F1} of bench/classical_policy.py's raw rows."""
    rows: dict[tuple, dict[str, float]] = {}
    if path.is_file():
        for r in json.loads(path.read_text())["rows"]:
            rows.setdefault((r["dataset"], r["shots"], r["seed"]), {})[r["policy"]] = r["macro_f1"]
    return rows


def lever_rows(lever: Lever, policies: dict[tuple, dict[str, float]],
               results: Path = RESULTS) -> list[tuple[list, dict]]:
    """One row per (scenario, shots) of the lever's raw cells in `results`, with the signs of its three
    comparisons (+1 / -1 clearly better / worse, 0 neither, None one seed or no pairing)."""
    cells = [{**c, "file": name} for name in lever.raw if (results / name).is_file()
             for c in json.loads((results / name).read_text())["cells"]]
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault((c["dataset"], c["shots"]), []).append(c)
    out = []
    for (dataset, shots), cs in sorted(groups.items(), key=lambda kv: (kv[0][0] != "mnist04", kv[0][1])):
        cs.sort(key=lambda c: c["seed"])
        stream = [f1(c, "gan") for c in cs]
        vs_source, s_src = delta(stream, [f1(c, "source") for c in cs])
        vs_classical, s_cls = delta(stream, [f1(c, "classical") for c in cs])
        pol = [policies.get((dataset, shots, c["seed"]), {}) for c in cs]
        paired = all(p.get("none") == f1(c, "baseline") and "crop" in p for p, c in zip(pol, cs))
        vs_crop, s_crop = delta(stream, [p["crop"] for p in pol]) if paired else ("—", None)
        added, _ = delta([f1(c, "gan_source") for c in cs], [f1(c, "source") for c in cs])
        files = ", ".join(sorted({f"`{c['file']}`" for c in cs}))
        out.append(([lever.label, dataset, shots, vs_source, vs_classical, vs_crop, added, files],
                    {"source": s_src, "classical": s_cls, "crop": s_crop, "n": len(cs)}))
    return out


def counts(signs: list[dict], key: str) -> str:
    """`b+ / w-  of n`: cells where the lever is clearly better / clearly worse, of those with an interval."""
    known = [s[key] for s in signs if s[key] is not None]
    return f"{known.count(1)} / {known.count(-1)} of {len(known)}"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="The lever table of docs/benchmarks.md, from bench/results/.")
    ap.add_argument("--out", type=Path, help="write it as the `levers` section of this markdown file instead of printing it")
    a = ap.parse_args(argv)
    policies = crop_rows(RESULTS / "classical_policy_dev.json")
    rows, summary = [], []
    for lever in LEVERS:
        found = lever_rows(lever, policies)
        rows += [row for row, _ in found]
        signs = [s for _, s in found]
        summary.append([lever.label, len(found), counts(signs, "source"), counts(signs, "classical"),
                        counts(signs, "crop"), f"`{lever.settings}`" if lever.settings else "(the defaults)"])
    body = "\n\n".join([
        markdown_table(HEADER, rows),
        markdown_table(["lever", "cells", "clearly better / worse than `source`", "than classical (TrivialAugment)",
                        "than classical (crop)", "its `--set`"], summary),
        f"Each lever's run: `{UPLIFT} <its --set>` (`--shots 5 20` for the other shot counts; a raw file "
        "named after one scenario holds that one only). This section: `.venv/bin/python -m bench.levers "
        "--out docs/benchmarks.md`."])
    if a.out:
        write_section(a.out, "levers", body)
    else:
        print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
