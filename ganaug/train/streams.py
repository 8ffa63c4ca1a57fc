"""The second training stream of fine-tuning: synthetic and/or relabelled source images with their targets.

Fine-tuning (`ganaug/train/fit.py`) draws, every step, a batch of real shots and a
batch of this stream, of sizes set in params, so the real shots are never
drowned however large the stream is (He et al., ICLR 2023; Label Hallucination,
Jian and Torresani, AAAI 2022). Each stream image carries

- `soft`: the teacher's class probabilities at temperature T (the teacher is a
  classifier fine-tuned on the real shots only, or the mean of several), and
- `hard`: the class it was generated for, or -1 where there is none (source
  images belong to other classes).

The loss on a stream batch (`stream_loss`) is `(1 - h) * T^2 * KL(soft || student_T)
+ h * CE(student, hard)`, with h the weight of the hard labels (`finetune.synth_labels`:
hard 1, soft 0, mixed `mixed_hard_weight`); rows without a hard label always
take the distillation term alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Stream:
    """Images of the second stream and their targets."""

    x: torch.Tensor  # (N, C, H, W) float in [-1, 1]
    soft: torch.Tensor  # (N, K) teacher probabilities at `temperature` (rows sum to 1)
    hard: torch.Tensor  # (N,) long: the intended class, or -1 for none
    temperature: float = 1.0
    refs: Optional[list[tuple[str, str]]] = None  # (origin, ref) of each image, when known (ganaug/io/stream_labels.py)

    def __len__(self) -> int:
        return len(self.hard)


@torch.no_grad()
def teacher_probs(teachers: Sequence[nn.Module], x: torch.Tensor, temperature: float, batch_size: int,
                  device: torch.device) -> torch.Tensor:
    """Mean of the teachers' softmax(logits / T) on `x` (eval mode), (N, K) on the CPU."""
    total = None
    for model in teachers:
        model.to(device).eval()
        probs = torch.cat([F.softmax(model(x[i:i + batch_size].to(device)).float() / temperature, 1).cpu()
                           for i in range(0, len(x), batch_size)]) if len(x) else torch.empty(0)
        total = probs if total is None else total + probs
        model.cpu()
    return total / len(teachers)


def stream_loss(logits: torch.Tensor, soft: torch.Tensor, hard: torch.Tensor, temperature: float,
                hard_weight: float) -> torch.Tensor:
    """Distillation at T (scaled by T^2, Hinton et al.) blended with cross-entropy on the hard labels."""
    log_p = F.log_softmax(logits / temperature, 1)  # (B, K)
    kd = (soft * (soft.clamp_min(1e-12).log() - log_p)).sum(1) * temperature ** 2  # (B,) KL(soft || student)
    has_hard = hard >= 0
    if hard_weight <= 0 or not bool(has_hard.any()):
        return kd.mean()
    ce = F.cross_entropy(logits, hard.clamp(min=0), reduction="none")  # (B,)
    h = has_hard.float() * hard_weight  # rows without a hard label: distillation only
    return ((1 - h) * kd + h * ce).mean()


def hard_weight_of(mode: str, mixed_hard_weight: float) -> float:
    """The weight of the hard-label term for a `finetune.synth_labels` name (hard, soft, mixed)."""
    return {"hard": 1.0, "soft": 0.0, "mixed": mixed_hard_weight}[mode]


class bn_eval:
    """Context manager: BatchNorm layers of `model` in eval mode (running statistics used, not updated)."""

    def __init__(self, model: nn.Module, active: bool = True):
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if active else []
        self.was: list[bool] = []

    def __enter__(self) -> "bn_eval":
        self.was = [m.training for m in self.layers]
        for m in self.layers:
            m.eval()
        return self

    def __exit__(self, *exc) -> None:
        for m, training in zip(self.layers, self.was):
            m.train(training)


def schedule_phase(step: int, total: int, schedule: str, first_fraction: float) -> str:
    """Which batches step `step` uses: 'joint' (both), 'stream' (the second stream alone) or 'real'."""
    if schedule == "joint":
        return "joint"
    return "stream" if step < round(first_fraction * total) else "real"


def subsample(n: int, k: Optional[int], seed: int) -> torch.Tensor:
    """Indices of a seeded random subset of size min(n, k) of range(n), in increasing order (all when k is None)."""
    if k is None or k >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:k].sort().values
