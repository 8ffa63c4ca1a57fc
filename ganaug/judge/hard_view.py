"""Which published images the class folders (the hard-label view) hold: `publish.hard_view`.

A reader of class folders (torchvision's `ImageFolder`, Hugging Face's `imagefolder`)
takes every image in a folder as a sure member of that class. Hard labels on
generated images are what made the `augmented` ablation harmful, so the rule is:

- real shots: always in the view;
- relabelled source images: never (they are images of other classes);
- synthetic images: only with `hard_view: confident`, when the teacher's most likely
  class is the class the generator was asked for with probability >= `min_confidence`,
  at most `max_per_shot` per real shot of that class, the most confident first.

`min_confidence` applies to the published probabilities, which are at the distillation temperature
(2 by default): at 0.9 no synthetic image passed on MNIST 0-4 -> 5-9. The measurement behind the
default (`real`) is in docs/downstream.md.
"""
from __future__ import annotations

import numpy as np

from ganaug.config.params import PublishParams


def hard_view(origin: np.ndarray, asked: np.ndarray, probs: np.ndarray, real_counts: np.ndarray,
              p: PublishParams) -> np.ndarray:
    """Boolean mask over the published rows. `origin` (N,) str, `asked` (N,) int (-1: none), `probs` (N, K)."""
    keep = origin == "real"
    if p.hard_view == "real" or not len(origin):
        return keep
    syn = origin == "synthetic"
    safe_asked = np.clip(asked, 0, probs.shape[1] - 1)
    conf = probs[np.arange(len(probs)), safe_asked]  # (N,) teacher p(asked class)
    ok = syn & (asked >= 0) & (probs.argmax(1) == asked) & (conf >= p.min_confidence)
    for k, n_real in enumerate(real_counts):
        rows = np.flatnonzero(ok & (asked == k))
        best = rows[np.argsort(-conf[rows], kind="stable")][: p.max_per_shot * int(n_real)]
        keep[best] = True
    return keep
