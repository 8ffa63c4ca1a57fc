"""Verdicts in words from paired-bootstrap deltas: did a variant help, hurt, or not clearly help?

Shared by the `evaluate` stage (its report) and the dataset's datasheet (`concat`),
so both say the same thing about the same numbers.
"""
from __future__ import annotations

BASELINE = "baseline"  # real shots, no augmentation
CLASSICAL = "classical"  # real shots, classical augmentation


def verdict(name: str, delta: float, lo: float, hi: float, ref: str = BASELINE) -> str:
    """One sentence: helped / hurt / did not clearly help, with the 95% interval."""
    if lo > 0:
        return f"{name} helped: macro-F1 {delta:+.3f} over {ref} (95% CI {lo:+.3f} to {hi:+.3f})."
    if hi < 0:
        return f"{name} hurt: macro-F1 {delta:+.3f} against {ref} (95% CI {lo:+.3f} to {hi:+.3f})."
    return (f"{name} did not clearly help: macro-F1 {delta:+.3f} against {ref}, "
            f"95% CI {lo:+.3f} to {hi:+.3f} includes 0.")


def verdicts(deltas: dict, ref: str = BASELINE) -> list[str]:
    """`verdict` of every variant of an eval.json `vs_baseline` / `vs_classical` table."""
    return [verdict(name, d["macro_f1"]["delta"], d["macro_f1"]["ci95_low"], d["macro_f1"]["ci95_high"], ref)
            for name, d in deltas.items()]


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
