"""Judging restoration: image quality against the clean images and the effect on a fine-tuned classifier.

`downstream` fine-tunes the pretrained classifier (real shots, no augmentation,
the `finetune:` budget and seed) once per treatment (none, classical, learned)
on that treatment's training shots and scores it on that treatment's test set;
the differences from `none` come with paired-bootstrap 95% intervals (the test
images and labels are the same, only their restoration differs).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ganaug.config.params import FinetuneParams
from ganaug.io.atomic import atomic_file
from ganaug.io.data import ImageSet, to_float
from ganaug.io.pictures import pyplot
from ganaug.judge.evaluation import compare
from ganaug.judge.metrics import classification_metrics
from ganaug.train.finetune import finetune
from ganaug.train.fit import predict

NONE = "none"


def downstream(classifier: Path, versions: dict[str, tuple[ImageSet, ImageSet]], p: FinetuneParams,
               eval_batch: int, device: torch.device) -> dict:
    """{treatment: accuracy, macro_f1 and (but `none`) the delta from `none` with its interval}."""
    results, preds = {}, {}
    for name, (train, test) in versions.items():
        model, _, _ = finetune(classifier, train, p, device, augment="none")
        preds[name] = predict(model, to_float(test.x), eval_batch, device).argmax(1).numpy()
        results[name] = classification_metrics(test.y, preds[name], test.class_names)
    out = {n: {m: round(r[m], 4) for m in ("accuracy", "macro_f1")} for n, r in results.items()}
    test = next(iter(versions.values()))[1]  # the same images and labels in every treatment, repaired differently
    for name, d in compare(results, preds, test, ref=NONE).items():
        out[name]["vs_none_macro_f1"] = {k: round(v, 4) for k, v in d["macro_f1"].items()}
    return out


def verdict(result: dict) -> str:
    """One sentence: did a restoration clearly help the classifier (interval above 0), or not."""
    helped = [n for n, r in result.items() if r.get("vs_none_macro_f1", {}).get("ci95_low", 0) > 0]
    hurt = [n for n, r in result.items() if r.get("vs_none_macro_f1", {}).get("ci95_high", 0) < 0]
    if helped:
        return f"restoration clearly helped the classifier: {', '.join(helped)} (95% interval of the macro-F1 gain above 0)"
    if hurt:
        return f"restoration clearly hurt the classifier: {', '.join(hurt)}; no treatment clearly helped"
    return "no restoration clearly changed the classifier's macro-F1 (every interval includes 0)"


def report_markdown(m: dict) -> str:
    """reports/restore.md from metrics/restore.json's content."""
    lines = ["# Restoration", "", f"- corruption: `{m['corrupt']}` on {m['corrupt_on']}",
             f"- restoration feeding the pipeline: {m['feeds_pipeline']}", ""]
    if m.get("quality"):
        lines += ["## Image quality against the clean images (held-out test images)", "",
                  "| treatment | PSNR (dB) | SSIM |", "|---|---|---|"]
        lines += [f"| {n} | {q['psnr']:.2f} | {q['ssim']:.4f} |" for n, q in m["quality"].items()]
        lines.append("")
    if m.get("downstream"):
        lines += ["## Fine-tuned classifier (real shots, same budget and seed)", "",
                  "| treatment | accuracy | macro-F1 | vs none (95% interval) |", "|---|---|---|---|"]
        for n, r in m["downstream"].items():
            d = r.get("vs_none_macro_f1")
            rel = f"{d['delta']:+.4f} [{d['ci95_low']:+.4f}, {d['ci95_high']:+.4f}]" if d else ""
            lines.append(f"| {n} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {rel} |")
        lines += ["", f"**{m['verdict']}**", ""]
    if m.get("learned"):
        lines += [f"Learned restorer: {_describe_learned(m['learned'])}", ""]
    return "\n".join(lines)


def _describe_learned(s: dict) -> str:
    src, ad = s["source"], s["adapt"]
    text = (f"meta-learned to undo `{s['corruption']}` over {src['episodes']} source tasks of {src['inner_steps']} steps "
            f"({src['seconds']} s)" if src.get("init") == "meta" else
            f"trained to undo `{s['corruption']}` for {src['steps']} steps on the source images ({src['seconds']} s)")
    if isinstance(ad, str):
        return f"{text}; adaptation {ad}"
    how = "with the adversarial term" if ad["adversarial"] else "on their known pixels only, L1"
    return f"{text}, then {ad['steps']} steps on the target shots ({how}; {ad['seconds']} s)"


def save_before_after(rows: dict[str, np.ndarray], path: Path, title: str, n: int = 10) -> None:
    """A picture with one row per treatment (clean, damaged, classical, learned) of the same n images."""
    plt = pyplot()
    names = list(rows)
    fig, axes = plt.subplots(len(names), 1, figsize=(0.6 * n + 1.5, 0.75 * len(names) + 0.6), dpi=100, squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        x = rows[name][:n]  # (n, C, S, S)
        strip = np.concatenate(list(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=128)), axis=-1)
        img = strip.transpose(1, 2, 0)
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
