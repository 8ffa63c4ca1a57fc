"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

The same random, differentiable augmentations are applied to real and generated
images before the discriminator, so that D cannot memorise the few real images
and G still gets gradients through the augmentation.

Images are float (B, C, H, W) in [-1, 1]. Every random number is drawn on the
CPU from the `torch.Generator` passed in and then moved to the images' device,
so a training run (and its resumption from a checkpoint) is reproducible
bit-for-bit. As in the reference implementation, translation pads and cutout
fills with 0 (mid-grey in [-1, 1]).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _uniform(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One U[0, 1) number per image, shaped (B, 1, 1, 1), on x's device and dtype."""
    return torch.rand((x.shape[0], 1, 1, 1), generator=g).to(device=x.device, dtype=x.dtype)


def _offsets(x: torch.Tensor, low: int, high: int, g: torch.Generator) -> torch.Tensor:
    """One integer in [low, high) per image, shaped (B, 1, 1), on x's device."""
    return torch.randint(low, high, (x.shape[0], 1, 1), generator=g).to(x.device)


def brightness(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Add one offset in [-0.5, 0.5) per image."""
    return x + (_uniform(x, g) - 0.5)


def saturation(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Scale each pixel's distance from its channel mean by [0, 2) (RGB only; grey is unchanged)."""
    if x.shape[1] != 3:
        return x
    mean = x.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    return (x - mean) * (_uniform(x, g) * 2) + mean


def contrast(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Scale each image's distance from its mean by [0.5, 1.5)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return (x - mean) * (_uniform(x, g) + 0.5) + mean


def color(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Brightness, saturation (RGB only) and contrast, in that order."""
    return contrast(saturation(brightness(x, g), g), g)


def translation(x: torch.Tensor, g: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to `ratio` of its size in each direction, padding with 0."""
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy, dx = _offsets(x, -sh, sh + 1, g), _offsets(x, -sw, sw + 1, g)  # (B, 1, 1) each
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + dy + 1).clamp(0, h + 1)  # (B, H, 1)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + dx + 1).clamp(0, w + 1)  # (B, 1, W)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)  # (B, 1, 1)
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)  # (B, H+2, W+2, C)
    return padded[batch, rows, cols].permute(0, 3, 1, 2)  # (B, C, H, W)


def cutout(x: torch.Tensor, g: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """Zero one square of `ratio` times the image size per image, at a random centre."""
    _, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = _offsets(x, 0, h + (1 - ch % 2), g) - ch // 2  # (B, 1, 1)
    left = _offsets(x, 0, w + (1 - cw % 2), g) - cw // 2  # (B, 1, 1)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)  # (B, H, W)
    return x * (~inside).unsqueeze(1).to(x.dtype)


AUGMENTS: dict[str, list[Augment]] = {
    "color": [brightness, saturation, contrast],
    "translation": [translation],
    "cutout": [cutout],
}


def diff_augment(x: torch.Tensor, policy: str, g: torch.Generator) -> torch.Tensor:
    """Apply the comma-separated `policy` (e.g. "color,translation,cutout"); "" is the identity."""
    for name in filter(None, (part.strip() for part in policy.split(","))):
        if name not in AUGMENTS:
            raise ValueError(f"unknown DiffAugment op {name!r}; allowed: {', '.join(AUGMENTS)}")
        for fn in AUGMENTS[name]:
            x = fn(x, g)
    return x.contiguous()
