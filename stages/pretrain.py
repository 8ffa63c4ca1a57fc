"""Stage `pretrain`: the pretrained classifier, trained on the source set.

Default: the small `convnet` trained from scratch on the source classes.
Option: a torchvision architecture (`classifier.arch`), starting from its
published ImageNet weights when `classifier.weights: imagenet` (read from the
local torch hub cache; a clear error says where to put them when absent), then
trained on the source set for `classifier.steps` (0 keeps ImageNet features).
Bring your own: `classifier.weights: file` starts from `classifier.checkpoint`,
a state dict of `classifier.arch` (or a ganaug classifier file); with
`classifier.steps: 0` it is used as it is. Its path is a param: DVC reruns when
the path changes; after changing the file in place run `dvc repro -f pretrain`.
A stratified 10% of the source is held out to report source accuracy.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ganaug.config.errors import exit_on_user_error
from ganaug.config.params import ClassifierParams, load_params
from ganaug.io.atomic import atomic_file, file_sha256
from ganaug.io.data import ImageSet, load_prepared, to_float
from ganaug.nets.classifier import (ClassifierConfig, build_classifier, load_imagenet_weights, load_user_weights,
                                    save_classifier)
from ganaug.train.fit import FitConfig, fit, predict
from ganaug.train.runtime import pick_device, seed_everything


def holdout_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train idx, held-out idx), stratified; at least one image per class stays in train."""
    rng = np.random.default_rng(seed)
    held = []
    for k in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == k))
        held.append(idx[: min(int(len(idx) * fraction), len(idx) - 1)])
    held_idx = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(y)), held_idx), held_idx


def pretrain(source: ImageSet, p: ClassifierParams, device: torch.device, live_dir: str | None = None):
    """Train the classifier on `source`; return (model, config, summary)."""
    seed_everything(p.seed)
    cfg = ClassifierConfig(p.arch, len(source.class_names), source.x.shape[1], source.x.shape[-1], p.width)
    model = build_classifier(cfg)
    if p.weights == "imagenet":
        load_imagenet_weights(model, p.arch)
    start = {}
    if p.weights == "file":
        load_user_weights(model, p.checkpoint, p.arch)
        start = {"start_checkpoint": str(p.checkpoint), "start_checkpoint_sha256": file_sha256(p.checkpoint)}
    train_idx, held_idx = holdout_split(source.y, 0.1, p.seed)
    x, y = to_float(source.x), torch.as_tensor(source.y)
    fit_cfg = FitConfig(p.steps, p.batch_size, p.lr, weight_decay=5e-4, seed=p.seed)
    summary = {**start, **fit(model, x[train_idx], y[train_idx], fit_cfg, device, live_dir, desc="pretrain")}
    if len(held_idx):
        pred = predict(model, x[held_idx], 512, device).argmax(1)
        summary["source_holdout_accuracy"] = round(float((pred == y[held_idx]).float().mean()), 4)
    return model.cpu(), cfg, summary


@exit_on_user_error
def main() -> None:
    p = load_params().classifier
    source = load_prepared("data/prepared/source.npz")
    model, cfg, summary = pretrain(source, p, pick_device(), live_dir="dvclive/pretrain")
    out = Path("models/classifier.pt")
    kept = {k: v for k, v in summary.items() if k not in ("seconds", "images_per_s")}  # same params, same bytes
    with atomic_file(out) as tmp:
        save_classifier(tmp, model, cfg, source.class_names, kept)
    print(f"pretrain: {cfg.arch} on {len(source)} source images, {summary['steps']} steps in {summary['seconds']}s, "
          f"held-out source accuracy {summary.get('source_holdout_accuracy', 'n/a')} -> {out}")


if __name__ == "__main__":
    main()
