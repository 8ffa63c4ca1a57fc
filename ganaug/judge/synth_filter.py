"""Choosing which generated images to keep: quotas, the classifier filter and the memorisation check.

A `Judge` holds the classifier fine-tuned on the real shots (`models/finetune/baseline.pt`)
and the features of those shots. For candidate images it gives the classifier's
confidence in the intended class, the distance (penultimate-layer features) to
the nearest real shot, and whether the candidate is a pixel-exact copy of one.

`generate_until_quota` draws candidates in rounds until every class has its
quota of kept images or `max_factor` x quota candidates were drawn:

- `none`: keep every candidate that is not a copy;
- `confidence`: keep candidates with confidence >= `min_confidence`;
- `top_fraction`: one round of ceil(quota / keep_fraction) candidates (capped),
  keep the ceil(keep_fraction x drawn) most confident, at most the quota.

Copies are dropped under every filter: pixel-exact copies of a real shot, and
candidates whose nearest real shot is closer than `min_nn_distance`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ganaug.config.errors import DataError
from ganaug.config.params import SynthParams
from ganaug.io.data import ImageSet, to_float
from ganaug.judge.feature_metrics import knn_radii, nearest_distances
from ganaug.nets.classifier import load_classifier
from ganaug.nets.sampling import Samples
from ganaug.train.fit import embed, predict

Generate = Callable[[torch.Tensor], Samples]  # labels (N,) -> uint8 images (N, C, S, S) and per-row columns


@dataclass
class Judge:
    model: torch.nn.Module
    real: ImageSet
    batch_size: int
    device: torch.device
    real_feats: np.ndarray = field(init=False)  # (N_real, F)
    real_bytes: set = field(init=False)

    def __post_init__(self) -> None:
        self.real_feats = embed(self.model, to_float(self.real.x), self.batch_size, self.device).numpy()
        self.real_bytes = {img.tobytes() for img in self.real.x}

    def score(self, x: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
        """conf (N,) p(intended class), nn_dist (N,) to the nearest real shot, exact (N,) bool."""
        xf = to_float(x)
        probs = predict(self.model, xf, self.batch_size, self.device).softmax(1).numpy()
        feats = embed(self.model, xf, self.batch_size, self.device).numpy()
        return {"conf": probs[np.arange(len(labels)), labels], "nn_dist": nearest_distances(feats, self.real_feats),
                "exact": np.array([img.tobytes() in self.real_bytes for img in x], dtype=bool)}

    def real_nn_median(self) -> float:
        """Median distance from a real shot to its nearest other real shot: the scale for min_nn_distance."""
        return float(np.median(np.sqrt(knn_radii(self.real_feats, 1)))) if len(self.real_feats) > 1 else float("nan")


def load_judge(classifier_path: Path, real: ImageSet, batch_size: int, device: torch.device) -> Judge:
    model, cfg, names = load_classifier(classifier_path)
    if names != real.class_names:
        raise DataError(f"{classifier_path}: classifier classes {names} differ from the target's {real.class_names}")
    return Judge(model, real, batch_size, device)


def quotas(p: SynthParams, n_classes: int, real_counts: np.ndarray | None) -> np.ndarray:
    """Images to keep per class (K,): `per_class`, or round(ratio x real shots of the class)."""
    if p.per_class is not None:
        return np.full(n_classes, p.per_class, dtype=np.int64)
    if real_counts is None:
        raise DataError("synth.ratio: needs the real training set (data/prepared/target_train.npz)")
    return np.round(p.ratio * np.asarray(real_counts, dtype=np.float64)).astype(np.int64)


def _round_sizes(quota: np.ndarray, kept: np.ndarray, drawn: np.ndarray, cap: np.ndarray, p: SynthParams) -> np.ndarray:
    """Candidates to draw per class in the next round."""
    if p.filter == "top_fraction":
        first = np.minimum(np.ceil(quota / p.keep_fraction - 1e-9).astype(np.int64), cap)
        return np.where(drawn == 0, first, 0)
    need = quota - kept
    return np.where(need > 0, np.minimum(quota, cap - drawn), 0).clip(min=0)


def _pick(idx: np.ndarray, conf: np.ndarray, n_drawn: int, room: int, p: SynthParams) -> np.ndarray:
    """Which of the usable candidates `idx` (generation order) of one class to keep."""
    if p.filter == "confidence":
        idx = idx[conf[idx] >= p.min_confidence]
    elif p.filter == "top_fraction":
        idx = idx[np.argsort(-conf[idx], kind="stable")][: math.ceil(p.keep_fraction * n_drawn - 1e-9)]
    return idx[:room]


def generate_until_quota(generate: Generate, judge: Judge | None, quota: np.ndarray,
                         p: SynthParams) -> tuple[Samples | None, np.ndarray, dict]:
    """(samples: uint8 images (N, C, S, S) and their columns, labels (N,), class-major, report) of the kept
    candidates; no samples when none were drawn.

    Without a judge every candidate is kept (one round, no filter or copy check).
    """
    if judge is None and p.filter != "none":
        raise DataError(f"synth.filter={p.filter}: needs the classifier fine-tuned on the real shots")
    k_classes = len(quota)
    cap = np.ceil(quota * p.max_factor - 1e-9).astype(np.int64) if judge else quota.copy()
    kept_s, kept_y, kept_conf = [], [], []
    kept, drawn = np.zeros(k_classes, np.int64), np.zeros(k_classes, np.int64)
    memo = {"checked": 0, "exact_copies": 0, "near_copies": 0, "nn_dist": []}
    while (n := _round_sizes(quota, kept, drawn, cap, p)).sum() > 0:
        labels = torch.arange(k_classes).repeat_interleave(torch.as_tensor(n))
        cand, y = generate(labels), labels.numpy()
        x = cand.images  # (N, C, S, S)
        drawn += n
        s = judge.score(x, y) if judge else {"conf": np.ones(len(y)), "nn_dist": np.full(len(y), np.inf),
                                              "exact": np.zeros(len(y), bool)}
        near = ~s["exact"] & (s["nn_dist"] < p.min_nn_distance)
        memo["checked"] += len(y) if judge else 0
        memo["exact_copies"] += int(s["exact"].sum())
        memo["near_copies"] += int(near.sum())
        memo["nn_dist"] += list(s["nn_dist"]) if judge else []
        usable = ~s["exact"] & ~near
        for k in range(k_classes):
            pick = _pick(np.flatnonzero((y == k) & usable), s["conf"], int(n[k]), int(quota[k] - kept[k]), p)
            kept_s.append(cand.take(pick))
            kept_y.append(y[pick])
            kept_conf.append(s["conf"][pick])
            kept[k] += len(pick)
        if p.filter == "top_fraction":
            break
    return _assemble(kept_s, kept_y, kept_conf, judge, quota, kept, drawn, memo, p)


def _assemble(kept_s: list[Samples], kept_y: list[np.ndarray], kept_conf: list[np.ndarray], judge: Judge | None,
              quota: np.ndarray, kept: np.ndarray, drawn: np.ndarray, memo: dict,
              p: SynthParams) -> tuple[Samples | None, np.ndarray, dict]:
    """The kept candidates in class-major order (generation order within a class) and the report."""
    y = np.concatenate(kept_y) if kept_y else np.zeros(0, np.int64)
    order = np.argsort(y, kind="stable")
    kept_samples = Samples.concat(kept_s).take(order) if kept_s else None
    conf = np.concatenate(kept_conf)[order] if kept_conf else np.zeros(0)
    return kept_samples, y[order], report(judge, quota, kept, drawn, conf, y[order], memo, p)


def report(judge: Judge | None, quota: np.ndarray, kept: np.ndarray, drawn: np.ndarray, conf: np.ndarray,
           y: np.ndarray, memo: dict, p: SynthParams) -> dict:
    """What `data/synthetic/report.json` holds: per-class quota, kept, drawn, shortfall; the copy check."""
    names = judge.real.class_names if judge else [str(k) for k in range(len(quota))]
    per_class = {name: {"quota": int(quota[k]), "kept": int(kept[k]), "drawn": int(drawn[k]),
                        "shortfall": int(quota[k] - kept[k]),
                        "mean_confidence": float(conf[y == k].mean()) if judge and (y == k).any() else None}
                 for k, name in enumerate(names)}
    d = np.asarray(memo["nn_dist"], dtype=np.float64)
    memorisation = None if judge is None else {
        "feature_space": "penultimate layer of the classifier fine-tuned on the real shots",
        "candidates_checked": memo["checked"], "exact_copies": memo["exact_copies"],
        "near_copies_dropped": memo["near_copies"], "min_nn_distance": p.min_nn_distance,
        "fraction_below_threshold": float((d < p.min_nn_distance).mean()) if len(d) else 0.0,
        "nn_distance_min": float(d.min()) if len(d) else None,
        "nn_distance_median": float(np.median(d)) if len(d) else None,
        "real_to_real_nn_distance_median": judge.real_nn_median(),
    }
    return {"filter": p.filter, "min_confidence": p.min_confidence, "keep_fraction": p.keep_fraction,
            "max_factor": p.max_factor, "quota_met": bool((kept >= quota).all()),
            "shortfall": int((quota - kept).sum()), "per_class": per_class, "memorisation": memorisation}
