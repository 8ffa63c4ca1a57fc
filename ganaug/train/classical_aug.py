"""Classical image augmentation for fine-tuning: `finetune.augment` and the `--augment` of the finetune stage.

A policy name maps to an `Augment` for `fit()`: a callable `(x, g) -> x` on a
float batch (B, C, H, W) in [-1, 1]. Every image gets, independently,

1. a random crop with zero padding of `H // 8` pixels on each side (the shift is
   drawn from `g`): small translations, all that the `crop` policy does; then
2. one torchvision v2 op on its uint8 pixels: `TrivialAugmentWide`,
   `RandAugment` or `ElasticTransform` (elastic distortion, sized to the image).

The label-mixing policies `mixup` and `cutmix` crop each image, then mix the
batch with torchvision's `MixUp` / `CutMix`: their `mix(x, y, g)` also returns
the mixed labels as probabilities (B, K), which `fit()` trains on with the soft
cross-entropy. They mix labels, so the second stream (`synth_augment`) cannot take them.

torchvision draws its randomness from torch's global CPU generator, so the ops
run inside `torch.random.fork_rng` with that generator seeded from `g`: the
result is a pure function of the batch and `g`'s state, the global RNG (e.g.
dropout) is left as it was, and fit()'s checkpoint/resume stays bit-exact.
fit() fingerprints an augmentation by its module and `repr`, which names the policy.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

from ganaug.config.errors import UserError
from ganaug.io.data import to_float
from ganaug.train.fit import Augment

# policy name -> the torchvision.transforms.v2 op applied after the crop ("": the crop alone; None: no augmentation
# at all). torchvision is imported only when an op is built: it adds seconds to the start of every stage that imports
# this module.
POLICIES: dict[str, Optional[str]] = {
    "none": None,
    "crop": "",
    "trivialaugment": "TrivialAugmentWide",
    "randaugment": "RandAugment",
    "elastic": "ElasticTransform",
    "mixup": "MixUp",
    "cutmix": "CutMix",
}
LABEL_MIXING = ("mixup", "cutmix")  # batch-level: they also mix the labels (fit() trains on the mixed probabilities)
# ElasticTransform's defaults (alpha 50, sigma 5) suit ~28-px images and its blur kernel is wider than 16 px: here
# alpha = 2 x and sigma = 1/8 x the image size, displacements of about 1-2 pixels at 16x16
ELASTIC_ALPHA, ELASTIC_SIGMA = 2.0, 0.125
SEED_BOUND = 2**62


def check_policy(policy: str, what: str = "augment") -> str:
    """`policy` if it is a known policy name, else a one-line UserError naming the allowed ones."""
    if policy not in POLICIES:
        raise UserError(f"{what}: unknown augmentation policy {policy!r}; allowed: {', '.join(POLICIES)}")
    return policy


def torchvision_op(policy: str, image_size: int, n_classes: Optional[int] = None) -> Callable:
    """A fresh instance of the policy's per-image torchvision v2 transform (identity for `crop`), or its batch
    mixer (MixUp, CutMix: needs `n_classes`)."""
    from torchvision.transforms import v2

    name = POLICIES[policy]
    if not name:
        return lambda img: img
    if policy in LABEL_MIXING:
        return getattr(v2, name)(num_classes=n_classes)
    if name == "ElasticTransform":
        return v2.ElasticTransform(alpha=ELASTIC_ALPHA * image_size, sigma=ELASTIC_SIGMA * image_size)
    return getattr(v2, name)()


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
    n_classes: Optional[int] = None  # label-mixing policies: the number of classes of the mixed labels
    pad_divisor: int = 8  # padding = image size // pad_divisor

    def __post_init__(self) -> None:
        check_policy(self.policy)
        if POLICIES[self.policy] is None:
            raise ValueError("policy 'none' has no augmentation (build_augment returns None for it)")
        if self.mixes_labels and not self.n_classes:
            raise ValueError(f"policy {self.policy!r} mixes labels: give n_classes")

    @property
    def mixes_labels(self) -> bool:
        return self.policy in LABEL_MIXING

    def _crop(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """x float (B, C, H, W) -> uint8 (B, C, H, W) on the CPU, each image shifted at random."""
        return random_crop(_to_uint8(x.detach().cpu()), x.shape[-1] // self.pad_divisor, g)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """x (B, C, H, W) float in [-1, 1] on any device -> same shape, dtype and device (per-image policies;
        a label-mixing policy only crops here: its mixing is `mix`)."""
        imgs = self._crop(x, g)
        if POLICIES[self.policy] and not self.mixes_labels:
            op = torchvision_op(self.policy, x.shape[-1])
            with _seeded(g):
                imgs = torch.stack([op(img) for img in imgs])  # (B, C, H, W) uint8
        return to_float(imgs).to(device=x.device, dtype=x.dtype)

    def mix(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Label-mixing policies: x (B, C, H, W) in [-1, 1], y (B,) long -> (mixed x, mixed labels (B, K) float)."""
        imgs = to_float(self._crop(x, g))  # (B, C, H, W) float
        op = torchvision_op(self.policy, x.shape[-1], self.n_classes)
        with _seeded(g):
            out, probs = op(imgs, y.detach().cpu())
        return out.to(device=x.device, dtype=x.dtype), probs.to(device=x.device, dtype=x.dtype)


@contextmanager
def _seeded(g: torch.Generator) -> Iterator[None]:
    """torch's global CPU generator seeded from `g` inside the block, restored after it."""
    seed = int(torch.randint(SEED_BOUND, (1,), generator=g))
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def build_augment(policy: str, n_classes: Optional[int] = None) -> Optional[Augment]:
    """The `Augment` for a policy name (label-mixing ones need `n_classes`), or None for `none`."""
    return None if POLICIES[check_policy(policy)] is None else ClassicalAugment(policy, n_classes)
