"""Stage `restore`: damage the target on purpose (`data.corrupt`) and repair it (`restore:`) -> `data/restored/`.

The rest of the pipeline reads the target from `data/restored/` (target_train.npz,
target_test.npz). With `data.corrupt: none` and `restore.enabled: false` (the
default) they are byte copies of `data/prepared/`, so nothing downstream changes.

Otherwise (`ganaug/restore/`): the corruption damages the training shots and/or
the test set (`data.corrupt_on`), seeded by `data.seed`; the classical restorer
(`restore.classical`) and, when `restore.enabled`, the learned one (a U-Net with
a patch discriminator trained on the source set to undo `restore.corruption`,
or meta-learned on source tasks with Reptile when `restore.init: meta`, then
adapted to the target shots; `ganaug/train/restorer.py`) repair them. What
feeds the pipeline: `restore.method` when enabled, else the damaged images.

Judged in `metrics/restore.json` and `reports/restore.md`: PSNR/SSIM against
the clean images, and macro-F1 of the classifier fine-tuned and tested on each
treatment (`ganaug/judge/restoration.py`); `plots/restore.png` shows the same
images clean, damaged and repaired. `models/restorer.pt` is the learned
restorer (a placeholder when it is off).
"""
from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ganaug.config.errors import exit_on_user_error
from ganaug.config.params import DataParams, Params, RestoreParams, load_params
from ganaug.io.atomic import atomic_dir, atomic_file, write_json
from ganaug.io.data import ImageSet, load_prepared, save_prepared
from ganaug.judge.image_quality import quality
from ganaug.judge.restoration import downstream, report_markdown, save_before_after, verdict
from ganaug.restore.classical import classical_name, restore_classical
from ganaug.restore.corruptions import corrupt, parse_spec
from ganaug.train.restorer import RestoreTrainConfig, meta_restorer, restore_images, train_restorer
from ganaug.train.runtime import pick_device

PREPARED, OUT = Path("data/prepared"), Path("data/restored")
SETS = ("target_train", "target_test")
PLACEHOLDER = {"placeholder": "restore.enabled is false: no restorer was trained"}


@dataclass
class Restored:
    sets: dict[str, ImageSet]  # what the pipeline reads (target_train, target_test)
    metrics: dict
    restorer: dict = field(default_factory=lambda: dict(PLACEHOLDER))
    rows: dict[str, np.ndarray] = field(default_factory=dict)  # the before/after picture's rows


def _seed(data: DataParams, which: int) -> int:
    return int(np.random.SeedSequence([data.seed, which]).generate_state(1)[0])


def _learned(source: ImageSet, shots: np.ndarray, shots_known: Optional[np.ndarray], spec: str, p: RestoreParams,
             device: torch.device, ckpt_dir: Path):
    """The restorer trained on the source set to undo `spec` (or its Reptile start, restore.init meta), then adapted
    to the shots (their known pixels)."""
    cfg = RestoreTrainConfig(p.steps, p.width, p.batch_size, p.lr, p.adv_weight, p.clean_fraction, p.seed,
                             p.checkpoint_every)
    if p.init == "meta":
        g, s_src = meta_restorer(source.x, source.y, spec, cfg, p.meta_episodes, p.meta_inner_steps, p.meta_outer_lr,
                                 p.meta_task_images, device, ckpt_path=ckpt_dir / "meta.pt")
    else:
        g, s_src = train_restorer(source.x, spec, cfg, device, ckpt_path=ckpt_dir / "source.pt", desc="restore source")
    summary = {"corruption": spec, "source": s_src, "adapt": "skipped: restore.adapt_steps is 0"}
    if p.adapt_steps and shots_known is not None and not shots_known.any():
        summary["adapt"] = "skipped: the shots are damaged everywhere, so no pixel can serve as a target"
    elif p.adapt_steps:
        weight = None if shots_known is None else shots_known
        _, s_ad = train_restorer(shots, spec, RestoreTrainConfig(**{**asdict(cfg), "steps": p.adapt_steps}), device,
                                 g=g, weight=weight, ckpt_path=ckpt_dir / "adapt.pt", desc="restore adapt")
        summary["adapt"] = s_ad
    return g, summary


def restore(train: ImageSet, test: ImageSet, source: ImageSet, params: Params, classifier: Path,
            device: torch.device, ckpt_dir: Path) -> Restored:
    """Damage, repair and judge the target sets (see the module's docstring)."""
    data, p = params.data, params.restore
    m = {"corrupt": data.corrupt, "corrupt_on": data.corrupt_on, "enabled": p.enabled}
    if data.corrupt == "none" and not p.enabled:
        return Restored({"target_train": train, "target_test": test},
                        {**m, "feeds_pipeline": "the prepared images, unchanged"}, rows={"clean": test.x})
    hit = {"target_train": data.corrupt_on in ("train", "both"), "target_test": data.corrupt_on in ("test", "both")}
    clean = {"target_train": train, "target_test": test}
    damaged, known = {}, {}
    for i, name in enumerate(SETS, 1):
        x = clean[name].x
        damaged[name], known[name] = corrupt(x, data.corrupt, _seed(data, i)) if hit[name] else (x, None)
        if known[name] is None and data.corrupt == "none":  # your own damaged data: no pixel is known clean
            known[name] = np.zeros((len(x), 1, *x.shape[2:]), dtype=bool)
    learn_spec = p.learned_spec(data.corrupt)
    kind = parse_spec(learn_spec)[0]
    treated = {"none": damaged}
    treated["classical"] = {n: restore_classical(damaged[n], known[n], p.classical, kind) if known[n] is not None
                            else damaged[n] for n in SETS}
    restorer = dict(PLACEHOLDER)
    if p.enabled:
        g, summary = _learned(source, damaged["target_train"], known["target_train"], learn_spec, p, device, ckpt_dir)
        treated["learned"] = {n: restore_images(g, damaged[n], known[n], device) if known[n] is not None
                              else damaged[n] for n in SETS}
        restorer = {"config": asdict(g.cfg), "state_dict": g.state_dict(), "summary": summary}
        m["learned"] = summary
    m["classical"] = classical_name(p.classical, kind)
    shown = "target_test" if known["target_test"] is not None else "target_train"
    if data.corrupt != "none":  # a clean reference exists
        m["quality_on"] = shown
        m["quality"] = {t: quality(clean[shown].x, sets[shown]) for t, sets in treated.items()}
    versions = {t: tuple(ImageSet(sets[n], clean[n].y, clean[n].class_names) for n in SETS) for t, sets in treated.items()}
    m["downstream"] = downstream(classifier, versions, params.finetune, params.eval.batch_size, device)
    m["verdict"] = verdict(m["downstream"])
    feeds = p.method if p.enabled else "none"
    m["feeds_pipeline"] = feeds if p.enabled else "none (the damaged images; restore.enabled is false)"
    rows = ({"clean": clean[shown].x} if data.corrupt != "none" else {}) | {
        ("damaged" if t == "none" else t): s[shown] for t, s in treated.items()}
    return Restored(dict(zip(SETS, versions[feeds])), m, restorer, rows)


def write_outputs(r: Restored, untouched: bool) -> None:
    """data/restored/, models/restorer.pt, metrics/restore.json, reports/restore.md, plots/restore.png."""
    with atomic_dir(OUT) as tmp:
        for name in SETS:
            if untouched:  # byte copies: nothing downstream reruns
                shutil.copyfile(PREPARED / f"{name}.npz", tmp / f"{name}.npz")
            else:
                save_prepared(tmp / f"{name}.npz", r.sets[name])
    with atomic_file("models/restorer.pt") as tmp:
        torch.save(r.restorer, tmp)
    write_json("metrics/restore.json", r.metrics)
    with atomic_file("reports/restore.md") as tmp:
        tmp.write_text(report_markdown(r.metrics) if not untouched else
                       "# Restoration\n\nOff: data.corrupt is none and restore.enabled is false.\n")
    title = "restoration off" if untouched else f"{r.metrics['corrupt']} on {r.metrics['corrupt_on']}"
    save_before_after(r.rows, Path("plots/restore.png"), title)


@exit_on_user_error
def main() -> None:
    params = load_params()
    train, test = (load_prepared(PREPARED / f"{n}.npz") for n in SETS)
    source = load_prepared(PREPARED / "source.npz")
    r = restore(train, test, source, params, Path("models/classifier.pt"), pick_device(), Path("checkpoints/restore"))
    untouched = params.data.corrupt == "none" and not params.restore.enabled
    write_outputs(r, untouched)
    if untouched:
        print(f"restore: off (data.corrupt none, restore.enabled false): {OUT} is a copy of {PREPARED}")
        return
    q = r.metrics.get("quality", {})
    for t, d in r.metrics["downstream"].items():
        qual = f"PSNR {q[t]['psnr']:.2f} dB, SSIM {q[t]['ssim']:.3f}, " if t in q else ""
        print(f"restore[{t}]: {qual}fine-tuned macro-F1 {d['macro_f1']:.4f}")
    print(f"restore: {r.metrics['verdict']}; the pipeline gets {r.metrics['feeds_pipeline']} -> {OUT}")


if __name__ == "__main__":
    main()
