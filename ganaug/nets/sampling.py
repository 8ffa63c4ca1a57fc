"""What every generator kind offers once loaded: a `Sampler`, labels (and shots) -> uint8 images and per-row columns.

A kind's checkpoint loader (registered in `ganaug/nets/generators.py`) returns a
`Sampler` whose `draw` maps class labels to images: every random number it
needs comes from the `torch.Generator` passed in, so a caller that keeps one
stream (synthesis: seeded with `synth.seed`) gets the same images whatever its
batch size. Conditioned kinds also read the real shots (an `ImageSet`, e.g.
`data/prepared/target_train.npz`) at every call; unconditioned ones (the GAN)
ignore them.

`Samples.columns` carries per-image metadata a kind wants in the synthetic
manifest (e.g. the index of the parent shot and the strength of the edit), one
array of N values per column; the GAN has none.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Protocol

import numpy as np
import torch

from ganaug.config.errors import DataError, UserError
from ganaug.io.data import ImageSet


@dataclass(frozen=True)
class SampleOptions:
    """How a loaded generator samples; a kind reads the options it has a use for."""
    weights: str = "ema"  # which weights of the checkpoint (gan: ema | average | raw)
    truncation: Optional[float] = None  # noise kinds: redraw noise entries with |z| > truncation; None = off
    batch_size: int = 256  # images per forward pass (does not change the images)
    device: torch.device = torch.device("cpu")


@dataclass(frozen=True)
class Samples:
    """Generated images and their per-image metadata, row for row."""
    images: np.ndarray  # (N, C, S, S) uint8
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (N,) values for the manifest

    def __len__(self) -> int:
        return len(self.images)

    def take(self, idx: np.ndarray) -> Samples:
        """The rows `idx`, images and columns alike."""
        return Samples(self.images[idx], {k: v[idx] for k, v in self.columns.items()})

    @staticmethod
    def concat(parts: list[Samples]) -> Samples:
        """`parts` one after the other; they must have the same columns."""
        return Samples(np.concatenate([s.images for s in parts]),
                       {k: np.concatenate([s.columns[k] for s in parts]) for k in parts[0].columns})


class Draw(Protocol):
    def __call__(self, labels: torch.Tensor, g: torch.Generator, shots: Optional[ImageSet]) -> Samples:
        """labels (N,) long, the noise stream and (conditioned kinds) the shots -> N samples."""


@dataclass(frozen=True)
class Sampler:
    """A loaded generator of any kind. `kind` and `conditioned` are set by the registry when it loads the file."""
    draw: Draw
    class_names: list[str]
    channels: int
    image_size: int
    source: Path = Path("")  # the checkpoint it was loaded from (for messages)
    kind: str = ""
    conditioned: bool = False  # draws from the real shots: needs them at every call

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def empty(self) -> Samples:
        """No images, at this generator's shape."""
        return Samples(np.zeros((0, self.channels, self.image_size, self.image_size), np.uint8))

    def __call__(self, labels: torch.Tensor, g: torch.Generator, shots: Optional[ImageSet] = None) -> Samples:
        """uint8 images (N, C, S, S) for `labels` (N,), drawn from `g`; `shots` for conditioned kinds."""
        require_shots(self, shots)
        out = self.draw(labels, g, shots if self.conditioned else None)
        check_samples(self, out, len(labels))
        return out


def require_shots(sampler: Sampler, shots: Optional[ImageSet]) -> None:
    """UserError when a conditioned generator gets no shots, DataError when their classes differ from its own."""
    if not sampler.conditioned:
        return
    if shots is None:
        raise UserError(f"{sampler.source}: a {sampler.kind!r} generator is conditioned on real shots; give them "
                        "(ganaug sample --shots an .npz of x, y such as data/prepared/target_train.npz)")
    if list(shots.class_names) != sampler.class_names:
        raise DataError(f"{sampler.source}: the shots' classes {list(shots.class_names)} differ from the "
                        f"generator's {sampler.class_names}")


def check_samples(sampler: Sampler, out: Samples, n: int) -> None:
    """ValueError (a bug in the kind) unless `out` is n uint8 images of the generator's shape with n-row columns."""
    shape = (n, sampler.channels, sampler.image_size, sampler.image_size)
    if out.images.dtype != np.uint8 or out.images.shape != shape:
        raise ValueError(f"{sampler.kind} generator: got {out.images.dtype} {out.images.shape}, expected uint8 {shape}")
    bad = [k for k, v in out.columns.items() if len(v) != n]
    if bad:
        raise ValueError(f"{sampler.kind} generator: column(s) {bad} do not have one value per image")
