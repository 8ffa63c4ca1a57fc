"""The image-to-image restorer: a small U-Net (encoder-decoder with skips) and a patch discriminator.

G sees the damaged image and its `known` mask (1 where a pixel is clean) and
predicts the clean image; `compose` keeps the known pixels and takes G's output
elsewhere, so inpainting never changes a known pixel and an undamaged image
(every pixel known) comes back bit for bit. D (pix2pix style) scores
overlapping patches of an image as clean or restored.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import spectral_norm


@dataclass
class RestorerConfig:
    channels: int
    image_size: int
    width: int = 16

    def __post_init__(self) -> None:
        if self.image_size % 4 or self.channels not in (1, 3):
            raise ValueError(f"need image_size a multiple of 4 and channels 1 or 3, got {self.image_size}, {self.channels}")


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8 if c_out % 8 == 0 else 1, c_out),
                         nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1), nn.SiLU())


class UNet(nn.Module):
    """(B, C, S, S) image in [-1, 1] and (B, 1, S, S) mask -> (B, C, S, S): two downsamplings by 2, skips at each."""

    def __init__(self, cfg: RestorerConfig):
        super().__init__()
        self.cfg = cfg
        w, c = cfg.width, cfg.channels
        self.enc1, self.enc2, self.mid = _block(c + 1, w), _block(w, 2 * w), _block(2 * w, 4 * w)
        self.down = nn.AvgPool2d(2)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2), _block(4 * w, 2 * w)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2), _block(2 * w, w)
        self.out = nn.Conv2d(w, c, 1)

    def forward(self, x: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(torch.cat([x, known], 1))  # (B, W, S, S)
        e2 = self.enc2(self.down(e1))  # (B, 2W, S/2, S/2)
        m = self.mid(self.down(e2))  # (B, 4W, S/4, S/4)
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))  # (B, 2W, S/2, S/2)
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))  # (B, W, S, S)
        return x + self.out(d1)  # a residual on the damaged image; clamped to [-1, 1] when written as uint8


def compose(damaged: torch.Tensor, known: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """Known pixels from `damaged`, the rest from `predicted`."""
    return torch.where(known.bool().expand_as(damaged), damaged, predicted)


class PatchDiscriminator(nn.Module):
    """(B, C, S, S) -> (B, 1, S/4, S/4) patch scores (spectral-normed convs, LeakyReLU)."""

    def __init__(self, cfg: RestorerConfig):
        super().__init__()
        w = cfg.width
        self.net = nn.Sequential(
            spectral_norm(nn.Conv2d(cfg.channels, w, 4, 2, 1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(w, 2 * w, 4, 2, 1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(2 * w, 1, 3, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
