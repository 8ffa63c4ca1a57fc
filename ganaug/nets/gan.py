"""The class-conditional GAN: generator, projection discriminator, hinge losses, sampling, loading.

The generator kind `gan` (KIND) of `ganaug/nets/generators.py`: `load_sampler` turns
a `models/gan.pt` into the `Sampler` synthesis and `ganaug sample` use.

Two layouts, keyed by `gan.arch` (ARCHS); both condition G through conditional
BatchNorm (a per-class gain and bias after every BatchNorm) and D through a
projection head (Miyato & Koyama 2018): spectral-normed convs with LeakyReLU,
global sum pooling to features h, output `linear(h) + <embed(y), h>`.

`resize` (default): G = z -> linear -> (2W, S/4, S/4) -> [nearest x2, 3x3 conv] x 2
-> (W/2, S, S) -> 3x3 conv -> tanh; D = a 3x3 conv at full resolution, two strided
4x4 convs down to S/4, a 3x3 conv there.

`dcgan`: G = z -> linear -> (4W, S/4, S/4) -> 4x4 transposed conv x2 -> (2W, S/2, S/2)
-> 4x4 transposed conv x2 -> (W, S, S) -> 3x3 conv -> tanh; D = two strided 4x4 convs
down to S/4 and a 3x3 conv there. About half the multiply-adds of `resize` at equal
widths (most of the compute at the lowest resolution); its samples are cleaner but
less varied, and made worse training data in most benchmark cells (docs/benchmarks.md).
The last 3x3 conv smooths the transposed convs' checkerboard: without it (plain DCGAN)
D wins and the samples lose their class.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from ganaug.config.errors import UserError
from ganaug.io.data import ImageSet, to_uint8
from ganaug.nets.sampling import SampleOptions, Sampler, Samples

KIND = "gan"  # the generator kind of the checkpoints train_gan writes


@dataclass
class GanConfig:
    n_classes: int
    image_size: int
    channels: int
    z_dim: int = 64
    g_width: int = 64
    d_width: int = 64
    arch: str = "resize"  # a key of ARCHS

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(map(repr, ARCHS))}, got {self.arch!r}")
        if self.image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4 (the generator upsamples twice), got {self.image_size}")
        if self.n_classes < 1 or self.channels not in (1, 3):
            raise ValueError(f"need n_classes >= 1 and channels 1 or 3, got {self.n_classes}, {self.channels}")


# ---------------------------------------------------------------- generator

class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without its own affine, followed by a per-class gain and bias."""

    def __init__(self, channels: int, n_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.embed = nn.Embedding(n_classes, 2 * channels)
        with torch.no_grad():
            self.embed.weight[:, :channels].fill_(1.0)  # gains start at 1
            self.embed.weight[:, channels:].zero_()  # biases start at 0

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gain, bias = self.embed(y).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)  # (B, C, 1, 1) each
        return self.bn(x) * gain + bias


class UpBlock(nn.Module):
    """4x4 transposed conv with stride 2 (doubles H and W), conditional BN, ReLU."""

    def __init__(self, c_in: int, c_out: int, n_classes: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False)
        self.norm = ConditionalBatchNorm2d(c_out, n_classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x), y))  # (B, C_out, 2H, 2W)


class Generator(nn.Module):
    """gan.arch=dcgan: z -> linear -> (4W, S/4, S/4) -> [4x4 transposed conv, CBN, ReLU] x 2 -> 3x3 conv -> tanh."""

    block: type[nn.Module] = UpBlock  # doubles H and W

    @staticmethod
    def widths(w: int) -> tuple[int, int, int]:
        """Channels at S/4, S/2 and S for g_width `w`."""
        return 4 * w, 2 * w, w

    def __init__(self, cfg: GanConfig):
        super().__init__()
        self.cfg = cfg
        (c0, c1, c2), self.base = self.widths(cfg.g_width), cfg.image_size // 4
        self.project = nn.Linear(cfg.z_dim, c0 * self.base * self.base, bias=False)
        self.norm0 = ConditionalBatchNorm2d(c0, cfg.n_classes)
        self.up1 = self.block(c0, c1, cfg.n_classes)
        self.up2 = self.block(c1, c2, cfg.n_classes)
        self.to_image = nn.Conv2d(c2, cfg.channels, 3, padding=1)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z (B, z_dim), y (B,) long -> images (B, C, S, S) in [-1, 1]."""
        x = self.project(z).view(len(z), -1, self.base, self.base)  # (B, C0, S/4, S/4)
        x = F.relu(self.norm0(x, y))
        x = self.up1(x, y)  # (B, C1, S/2, S/2)
        x = self.up2(x, y)  # (B, C2, S, S)
        return torch.tanh(self.to_image(x))  # (B, C, S, S)


# ---------------------------------------------------------------- discriminator

class Discriminator(nn.Module):
    def __init__(self, cfg: GanConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.d_width
        # each conv built and spectral-normed in turn (the order of the random init draws)
        self.convs = nn.ModuleList([spectral_norm(nn.Conv2d(*spec)) for spec in self.conv_specs(cfg)])
        self.linear = spectral_norm(nn.Linear(2 * w, 1))
        self.embed = spectral_norm(nn.Embedding(cfg.n_classes, 2 * w))

    @staticmethod
    def conv_specs(cfg: GanConfig) -> list[tuple[int, int, int, int, int]]:
        """(in, out, kernel, stride, padding) of D's convs, from the image to (2W, S/4, S/4)."""
        w = cfg.d_width
        return [
            (cfg.channels, w, 4, 2, 1),  # S/2
            (w, 2 * w, 4, 2, 1),  # S/4
            (2 * w, 2 * w, 3, 1, 1),  # S/4
        ]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, S, S) -> globally sum-pooled features (B, 2W)."""
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)  # (B, C', H', W')
        return x.sum(dim=(2, 3))  # (B, 2W)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Images (B, C, S, S), labels (B,) -> logits (B,)."""
        h = self.features(x)  # (B, F)
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)  # (B,)


# ---------------------------------------------------------------- gan.arch=resize

class ResizeUpBlock(nn.Module):
    """Nearest upsample x2, 3x3 conv, conditional BN, ReLU."""

    def __init__(self, c_in: int, c_out: int, n_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.norm = ConditionalBatchNorm2d(c_out, n_classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")  # (B, C_in, 2H, 2W)
        return F.relu(self.norm(self.conv(x), y))  # (B, C_out, 2H, 2W)


class ResizeGenerator(Generator):
    """gan.arch=resize: z -> linear -> (2W, S/4, S/4) -> [nearest x2, 3x3 conv, CBN, ReLU] x 2 -> 3x3 conv -> tanh."""

    block = ResizeUpBlock

    @staticmethod
    def widths(w: int) -> tuple[int, int, int]:
        return 2 * w, w, w // 2


class ResizeDiscriminator(Discriminator):
    """gan.arch=resize: a 3x3 conv at full resolution, then as `Discriminator` with a 2W-wide 3x3 conv at S/4."""

    @staticmethod
    def conv_specs(cfg: GanConfig) -> list[tuple[int, int, int, int, int]]:
        w = cfg.d_width
        return [
            (cfg.channels, w // 2, 3, 1, 1),  # S
            (w // 2, w, 4, 2, 1),  # S/2
            (w, 2 * w, 4, 2, 1),  # S/4
            (2 * w, 2 * w, 3, 1, 1),  # S/4
        ]


ARCHS: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "resize": (ResizeGenerator, ResizeDiscriminator),  # the default: upsample + 3x3 convs at every resolution
    "dcgan": (Generator, Discriminator),  # about half the multiply-adds of `resize`
}


def build_generator(cfg: GanConfig) -> nn.Module:
    return ARCHS[cfg.arch][0](cfg)


def build_discriminator(cfg: GanConfig) -> nn.Module:
    return ARCHS[cfg.arch][1](cfg)


# ---------------------------------------------------------------- losses

def d_hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def g_hinge_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-mean(D(fake))."""
    return -fake_logits.mean()


# ---------------------------------------------------------------- sampling and loading

def truncated_noise(n: int, z_dim: int, g: torch.Generator, truncation: Optional[float] = None) -> torch.Tensor:
    """(n, z_dim) standard normal noise; with `truncation` t, every entry with |z| > t is redrawn until none is left.

    The truncation trick (Brock et al. 2019): a smaller t trades diversity for typical, cleaner samples.
    """
    z = torch.randn((n, z_dim), generator=g)
    if truncation is None:
        return z
    while True:
        bad = z.abs() > truncation
        n_bad = int(bad.sum())
        if n_bad == 0:
            return z
        z[bad] = torch.randn(n_bad, generator=g)


@torch.no_grad()
def sample(
    generator_module: nn.Module,
    labels: torch.Tensor,
    z_dim: int,
    g: torch.Generator,
    device: torch.device,
    batch_size: int,
    truncation: Optional[float] = None,
) -> torch.Tensor:
    """Images (N, C, S, S) in [-1, 1] on the CPU for `labels` (N,), in eval mode.

    All N noise vectors are drawn from `g` up front (see `truncated_noise`), so
    image i depends only on the generator's state and i, not on `batch_size`.
    """
    cfg = generator_module.cfg
    z = truncated_noise(len(labels), z_dim, g, truncation)  # (N, z_dim)
    was_training = generator_module.training
    generator_module.eval()
    out = [
        generator_module(z[i : i + batch_size].to(device), labels[i : i + batch_size].to(device)).cpu()
        for i in range(0, len(labels), batch_size)
    ]
    generator_module.train(was_training)
    return torch.cat(out) if out else torch.empty((0, cfg.channels, cfg.image_size, cfg.image_size))


GENERATOR_KEYS = {"ema": "generator_ema", "average": "generator_average", "raw": "generator"}


@dataclass(frozen=True)
class GanDraw:
    """The GAN's `Draw`: one noise vector per label from the stream `g` (see `sample`); the shots are not used."""
    net: nn.Module
    z_dim: int
    opts: SampleOptions

    def __call__(self, labels: torch.Tensor, g: torch.Generator, shots: Optional[ImageSet]) -> Samples:
        x = sample(self.net, labels, self.z_dim, g, self.opts.device, self.opts.batch_size, self.opts.truncation)
        return Samples(to_uint8(x))  # (N, C, S, S) uint8


def load_sampler(ckpt: dict, opts: SampleOptions, path: Path) -> Sampler:
    """The generator of a `models/gan.pt` (read with weights_only=True) as a `Sampler`, on `opts.device`.

    `opts.weights`: `ema` (the exponential moving average of G), `average` (the mean
    of the last `gan.average_last` snapshots) or `raw` (G's final weights).
    """
    cfg = GanConfig(**ckpt["config"])
    if opts.weights == "average" and GENERATOR_KEYS["average"] not in ckpt:
        raise UserError(f"{path}: synth.generator=average needs gan.average_last >= 1 when training the GAN")
    net = build_generator(cfg)
    net.load_state_dict(ckpt[GENERATOR_KEYS[opts.weights]])
    net.eval().to(opts.device)
    return Sampler(GanDraw(net, cfg.z_dim, opts), [str(c) for c in ckpt["class_names"]], cfg.channels, cfg.image_size)
