"""Classical image augmentation for fine-tuning: `finetune.augment` and the `--augment` of the finetune stage.

A policy name maps to an `Augment` for `fit()`: a callable `(x, g) -> x` on a
float batch (B, C, H, W) in [-1, 1]. Every image gets, independently,

1. a random crop with zero padding of `H // 8` pixels on each side (the shift is
   drawn from `g`), then
2. one torchvision v2 op (`TrivialAugmentWide` or `RandAugment`) on its uint8 pixels.

torchvision draws its randomness from torch's global CPU generator, so the ops
run inside `torch.random.fork_rng` with that generator seeded from `g`: the
result is a pure function of the batch and `g`'s state, the global RNG (e.g.
dropout) is left as it was, and fit()'s checkpoint/resume stays bit-exact.
fit() fingerprints an augmentation by its module and `repr`, which names the policy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ganaug.config.errors import UserError
from ganaug.io.data import to_float
from ganaug.train.fit import Augment

# policy name -> the torchvision.transforms.v2 op it applies (None: no augmentation at all). torchvision is
# imported only when an op is built: it adds seconds to the start of every stage that imports this module.
POLICIES: dict[str, Optional[str]] = {
    "none": None,
    "trivialaugment": "TrivialAugmentWide",
    "randaugment": "RandAugment",
}
SEED_BOUND = 2**62


def check_policy(policy: str, what: str = "augment") -> str:
    """`policy` if it is a known policy name, else a one-line UserError naming the allowed ones."""
    if policy not in POLICIES:
        raise UserError(f"{what}: unknown augmentation policy {policy!r}; allowed: {', '.join(POLICIES)}")
    return policy


def torchvision_op(policy: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A fresh instance of the policy's torchvision v2 transform (default arguments)."""
    from torchvision.transforms import v2

    return getattr(v2, POLICIES[policy])()


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (exact for images that were uint8)."""
    return x.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def random_crop(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Per-image random crop of a zero-padded uint8 batch (B, C, H, W) back to (H, W); shifts drawn from `g`."""
    if pad <= 0:
        return x
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p), zeros
    off = torch.randint(0, 2 * pad + 1, (len(x), 2), generator=g)  # (B, 2): top, left
    return torch.stack([padded[i, :, t : t + h, l : l + w] for i, (t, l) in enumerate(off.tolist())])


@dataclass(frozen=True)
class ClassicalAugment:
    """Random crop with padding, then the policy's torchvision op, per image. Usable as fit()'s `augment`."""

    policy: str
    pad_divisor: int = 8  # padding = image size // pad_divisor

    def __post_init__(self) -> None:
        check_policy(self.policy)
        if POLICIES[self.policy] is None:
            raise ValueError("policy 'none' has no augmentation (build_augment returns None for it)")

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """x (B, C, H, W) float in [-1, 1] on any device -> same shape, dtype and device."""
        op = torchvision_op(self.policy)
        imgs = random_crop(_to_uint8(x.detach().cpu()), x.shape[-1] // self.pad_divisor, g)
        seed = int(torch.randint(SEED_BOUND, (1,), generator=g))
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            out = torch.stack([op(img) for img in imgs])  # (B, C, H, W) uint8
        return to_float(out).to(device=x.device, dtype=x.dtype)


def build_augment(policy: str) -> Optional[Augment]:
    """The `Augment` for a policy name, or None for `none`."""
    return None if POLICIES[check_policy(policy)] is None else ClassicalAugment(policy)
