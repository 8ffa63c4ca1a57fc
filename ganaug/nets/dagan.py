"""The generator kind `dagan`: variations of the real shots by a data-augmentation GAN (DAGAN).

DAGAN (Antoniou, Storkey & Edwards 2017): a generator G(x, z) takes an image x
and noise z and returns another plausible image of x's class; it needs no class
labels, so it is trained on the source classes (`ganaug/train/dagan.py`) and
applied to the target shots. The discriminator D(x, y) scores pairs: a real
pair is two different images of one class, a fake pair is (x, G(x, z)) (or
two real images of different classes), so G learns class-preserving
variations rather than copies of x.

G is a small U-Net: 3x3 conv at S, two strided 4x4 convs down to S/4, where z
(projected to a (W, S/4, S/4) map) joins the bottleneck, then two
[nearest x2, 3x3 conv] steps back up with skips from the encoder, and a 3x3
conv with tanh. D is the GAN's resize discriminator on the channel-concatenated
pair (spectral-normed convs, LeakyReLU, global sum pooling, a linear head),
trained with the hinge loss of `ganaug/nets/gan.py`.

Sampling varies each shot in turn: within one call the j-th label of class k
varies that class's shot j mod n_k (`round_robin`, as the `repair` kind does).
All noise vectors are drawn from the caller's `torch.Generator` up front, so a
seeded stream gives the same images at any batch size. The manifest columns
are `parent_shot` (an index into the shots array) and `strength` (NaN: a DAGAN
variation has no edit strength).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from ganaug.config.errors import UserError
from ganaug.io.data import ImageSet, to_float, to_uint8
from ganaug.nets.gan import truncated_noise
from ganaug.nets.repair import round_robin
from ganaug.nets.sampling import SampleOptions, Sampler, Samples

KIND = "dagan"
GENERATOR_KEYS = {"ema": "generator_ema", "raw": "generator"}  # SampleOptions.weights -> checkpoint key


@dataclass
class DaganConfig:
    image_size: int
    channels: int
    z_dim: int = 16
    g_width: int = 16
    d_width: int = 16

    def __post_init__(self) -> None:
        if self.image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4 (G downsamples twice), got {self.image_size}")
        if self.channels not in (1, 3) or min(self.z_dim, self.g_width, self.d_width) < 1:
            raise ValueError(f"need channels 1 or 3 and positive widths, got {self.channels}, {self.z_dim}, "
                             f"{self.g_width}, {self.d_width}")


# ---------------------------------------------------------------- generator

def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int, padding: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class UpBlock(nn.Module):
    """Nearest upsample x2, concatenate the encoder's skip, 3x3 conv, BN, ReLU."""

    def __init__(self, c_in: int, c_skip: int, c_out: int):
        super().__init__()
        self.conv = _conv_bn_relu(c_in + c_skip, c_out, 3, 1, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")  # (B, C_in, 2H, 2W)
        return self.conv(torch.cat([x, skip], 1))  # (B, C_out, 2H, 2W)


class DaganGenerator(nn.Module):
    """G(x, z): an image (B, C, S, S) in [-1, 1] and noise (B, z_dim) -> a variation (B, C, S, S) in [-1, 1]."""

    def __init__(self, cfg: DaganConfig):
        super().__init__()
        self.cfg = cfg
        w, self.base = cfg.g_width, cfg.image_size // 4
        self.enc1 = _conv_bn_relu(cfg.channels, w, 3, 1, 1)  # S
        self.enc2 = _conv_bn_relu(w, 2 * w, 4, 2, 1)  # S/2
        self.enc3 = _conv_bn_relu(2 * w, 4 * w, 4, 2, 1)  # S/4
        self.project = nn.Linear(cfg.z_dim, w * self.base * self.base, bias=False)
        self.mix = _conv_bn_relu(5 * w, 4 * w, 3, 1, 1)  # bottleneck + noise map
        self.up2 = UpBlock(4 * w, 2 * w, 2 * w)
        self.up1 = UpBlock(2 * w, w, w)
        self.to_image = nn.Conv2d(w, cfg.channels, 3, padding=1)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)  # (B, W, S, S)
        e2 = self.enc2(e1)  # (B, 2W, S/2, S/2)
        e3 = self.enc3(e2)  # (B, 4W, S/4, S/4)
        noise = self.project(z).view(len(z), -1, self.base, self.base)  # (B, W, S/4, S/4)
        h = self.mix(torch.cat([e3, noise], 1))  # (B, 4W, S/4, S/4)
        h = self.up2(h, e2)  # (B, 2W, S/2, S/2)
        h = self.up1(h, e1)  # (B, W, S, S)
        return torch.tanh(self.to_image(h))  # (B, C, S, S)


# ---------------------------------------------------------------- discriminator

class PairDiscriminator(nn.Module):
    """D(x, y): a pair of images (B, C, S, S) each -> logits (B,): high for two real images of one class."""

    def __init__(self, cfg: DaganConfig):
        super().__init__()
        self.cfg = cfg
        self.convs = nn.ModuleList([spectral_norm(nn.Conv2d(*spec)) for spec in self.conv_specs(cfg)])
        self.linear = spectral_norm(nn.Linear(2 * cfg.d_width, 1))

    @staticmethod
    def conv_specs(cfg: DaganConfig) -> list[tuple[int, int, int, int, int]]:
        """(in, out, kernel, stride, padding) from the pair (2C, S, S) to (2W, S/4, S/4), as the GAN's resize D."""
        w = cfg.d_width
        return [
            (2 * cfg.channels, max(w // 2, 1), 3, 1, 1),  # S
            (max(w // 2, 1), w, 4, 2, 1),  # S/2
            (w, 2 * w, 4, 2, 1),  # S/4
            (2 * w, 2 * w, 3, 1, 1),  # S/4
        ]

    def forward_pair(self, pair: torch.Tensor) -> torch.Tensor:
        """Channel-concatenated pairs (B, 2C, S, S) -> logits (B,)."""
        h = pair
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.2)  # (B, C', H', W')
        return self.linear(h.sum(dim=(2, 3))).squeeze(1)  # (B,)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.forward_pair(torch.cat([x, y], 1))  # (B, 2C, S, S) -> (B,)


# ---------------------------------------------------------------- sampling and loading

@torch.no_grad()
def vary(net: DaganGenerator, parents: torch.Tensor, z: torch.Tensor, device: torch.device,
         batch_size: int) -> torch.Tensor:
    """G's variations (N, C, S, S) in [-1, 1], on the CPU, of `parents` (N, C, S, S) with noise `z` (N, z_dim).

    Runs G in eval mode (BatchNorm's running statistics), so image i does not depend on `batch_size`.
    """
    was_training = net.training
    net.eval()
    out = [net(parents[i:i + batch_size].to(device), z[i:i + batch_size].to(device)).cpu()
           for i in range(0, len(parents), batch_size)]
    net.train(was_training)
    return torch.cat(out) if out else torch.empty((0, *parents.shape[1:]))


@dataclass(frozen=True)
class DaganDraw:
    """The `dagan` kind's `Draw`: one variation of a round-robin parent shot per label."""
    net: DaganGenerator
    opts: SampleOptions

    def __call__(self, labels: torch.Tensor, g: torch.Generator, shots: Optional[ImageSet]) -> Samples:
        parents = round_robin(labels.numpy(), shots.y)  # (N,)
        z = truncated_noise(len(parents), self.net.cfg.z_dim, g, self.opts.truncation)  # (N, z_dim)
        x = vary(self.net, to_float(shots.x[parents]), z, self.opts.device, self.opts.batch_size)  # (N, C, S, S)
        return Samples(to_uint8(x), {"parent_shot": parents, "strength": np.full(len(parents), np.nan)})


def load_sampler(ckpt: dict, opts: SampleOptions, path: Path) -> Sampler:
    """The DAGAN of a `models/generators/dagan.pt` as a `Sampler` (`opts.weights`: ema or raw)."""
    if opts.weights not in GENERATOR_KEYS:
        raise UserError(f"{path}: a {KIND!r} generator has weights {' or '.join(GENERATOR_KEYS)}, not {opts.weights!r}")
    cfg = DaganConfig(**ckpt["config"])
    net = DaganGenerator(cfg)
    net.load_state_dict(ckpt[GENERATOR_KEYS[opts.weights]])
    net.eval().to(opts.device)
    return Sampler(DaganDraw(net, opts), [str(c) for c in ckpt["class_names"]], cfg.channels, cfg.image_size)
