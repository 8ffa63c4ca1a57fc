"""The generator kind `repair`: variations of the real shots, each damaged at random and repaired.

A repair model is the restorer U-Net (`ganaug/nets/restorer.py`) trained on the
source images only to undo damage drawn on the fly (`ganaug/train/repair.py`).
To vary a shot, the sampler damages it with a corruption of the checkpoint's
list (`ganaug/restore/corruptions.py`) at a strength drawn uniformly in
[lo, hi], and lets the model complete it: a new, class-faithful variant of the
shot itself (a cheap relative of DA-Fusion's "real guidance").

Parents go round-robin: within one call, the j-th label of class k varies that
class's shot j mod n_k (shots in the order of the shots array), so every shot
gets variations evenly. Which corruption, its strength and the seed of its
pixels are drawn per image from the caller's `torch.Generator` only, so a
seeded stream gives the same images at any batch size. The manifest columns
are `parent_shot` (an index into the shots array) and `strength`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ganaug.config.errors import DataError
from ganaug.io.data import ImageSet, to_float, to_uint8
from ganaug.nets.restorer import RestorerConfig, UNet, compose
from ganaug.nets.sampling import SampleOptions, Sampler, Samples
from ganaug.restore.corruptions import CORRUPTIONS

KIND = "repair"
SEED_RANGE = 2**62  # per-image corruption seeds are drawn in [0, SEED_RANGE)


@dataclass(frozen=True)
class Damage:
    """Per-image damage: which corruption (index into the list), its strength in (0, 1] and its pixel seed."""
    which: np.ndarray  # (N,) int64
    strength: np.ndarray  # (N,) float64
    seed: np.ndarray  # (N,) int64


def draw_damage(n: int, n_corruptions: int, strengths: tuple[float, float], g: torch.Generator) -> Damage:
    """n draws from the stream `g`: a corruption, a strength uniform in [lo, hi] and a seed per image."""
    lo, hi = strengths
    which = torch.randint(n_corruptions, (n,), generator=g).numpy()
    strength = (lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)).numpy()
    seed = torch.randint(SEED_RANGE, (n,), generator=g).numpy()
    return Damage(which.astype(np.int64), strength, seed.astype(np.int64))


def apply_damage(x: np.ndarray, names: list[str], d: Damage) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, C, S, S) damaged image by image -> (damaged uint8 (N, C, S, S), known bool (N, 1, S, S))."""
    damaged = np.empty_like(x)
    known = np.empty((len(x), 1, *x.shape[2:]), dtype=bool)
    for i in range(len(x)):
        rng = np.random.default_rng(int(d.seed[i]))
        damaged[i:i + 1], known[i:i + 1] = CORRUPTIONS[names[int(d.which[i])]](x[i:i + 1], float(d.strength[i]), rng)
    return damaged, known


@torch.no_grad()
def repair(net: UNet, damaged: np.ndarray, known: np.ndarray, device: torch.device, batch_size: int) -> np.ndarray:
    """The model's completion of damaged uint8 images (N, C, S, S); known pixels come back unchanged."""
    out = []
    for i in range(0, len(damaged), batch_size):
        xd = to_float(damaged[i:i + batch_size]).to(device)  # (B, C, S, S)
        k = torch.from_numpy(known[i:i + batch_size]).float().to(device)  # (B, 1, S, S)
        out.append(to_uint8(compose(xd, k, net(xd, k))))
    return np.concatenate(out) if out else damaged.copy()


def round_robin(labels: np.ndarray, shot_labels: np.ndarray) -> np.ndarray:
    """Parent shot (N,) of each label: the j-th label of class k takes that class's shot j mod n_k."""
    parents = np.empty(len(labels), dtype=np.int64)
    for k in np.unique(labels):
        rows, idx = np.flatnonzero(labels == k), np.flatnonzero(shot_labels == k)
        if len(idx) == 0:
            raise DataError(f"repair generator: no real shot of class {int(k)} to vary")
        parents[rows] = idx[np.arange(len(rows)) % len(idx)]
    return parents


@dataclass(frozen=True)
class RepairDraw:
    """The `repair` kind's `Draw`: one damaged-and-repaired parent shot per label."""
    net: UNet
    corruptions: list[str]
    strengths: tuple[float, float]
    opts: SampleOptions

    def __call__(self, labels: torch.Tensor, g: torch.Generator, shots: Optional[ImageSet]) -> Samples:
        parents = round_robin(labels.numpy(), shots.y)  # (N,)
        d = draw_damage(len(parents), len(self.corruptions), self.strengths, g)
        damaged, known = apply_damage(shots.x[parents], self.corruptions, d)  # (N, C, S, S), (N, 1, S, S)
        images = repair(self.net, damaged, known, self.opts.device, self.opts.batch_size)
        return Samples(images, {"parent_shot": parents, "strength": d.strength})


def load_sampler(ckpt: dict, opts: SampleOptions, path: Path) -> Sampler:
    """The repair model of a `models/generators/repair.pt` as a `Sampler`."""
    cfg = RestorerConfig(**ckpt["config"])
    net = UNet(cfg)
    net.load_state_dict(ckpt["weights"])
    net.eval().to(opts.device)
    lo, hi = (float(s) for s in ckpt["strengths"])
    draw = RepairDraw(net, [str(c) for c in ckpt["corruptions"]], (lo, hi), opts)
    return Sampler(draw, [str(c) for c in ckpt["class_names"]], cfg.channels, cfg.image_size)
