"""Seeded image corruptions with a severity, keyed by name (as DiffAugment keys its ops by policy string).

A corruption spec is `<name>:<severity>` with severity in (0, 1], e.g. `occlusion:0.3`:

| name | what severity s means |
|---|---|
| `noise` | additive Gaussian noise, standard deviation s x 255 |
| `blur` | Gaussian blur, sigma 4 s pixels |
| `occlusion` | one random rectangle covering a fraction s of the image, filled grey (128) |
| `pixels` | a fraction s of the pixels missing, each chosen independently, filled grey |
| `combo` | `occlusion` at s, then `noise` at s / 3 |

Every function maps uint8 images (N, C, H, W), a severity and a numpy Generator
to (damaged uint8 images, `known` bool (N, 1, H, W)): True where a pixel is
still exactly the clean value. Inpainting keeps those pixels; where noise or
blur touched every pixel, none is known.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

FILL = 128  # the grey that missing pixels get
Damaged = tuple[np.ndarray, np.ndarray]  # (uint8 images (N, C, H, W), known (N, 1, H, W) bool)
Corruption = Callable[[np.ndarray, float, np.random.Generator], Damaged]


def _mask_shape(x: np.ndarray) -> tuple[int, ...]:
    return (x.shape[0], 1, *x.shape[2:])


def noise(x: np.ndarray, s: float, rng: np.random.Generator) -> Damaged:
    noisy = x.astype(np.float32) + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(s * 255.0)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8), np.zeros(_mask_shape(x), dtype=bool)


def blur(x: np.ndarray, s: float, rng: np.random.Generator) -> Damaged:
    from scipy.ndimage import gaussian_filter  # here: params.py imports this module for parse_spec

    sigma = (0, 0, 4.0 * s, 4.0 * s)  # blur within each image and channel only
    out = gaussian_filter(x.astype(np.float32), sigma=sigma, mode="nearest")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), np.zeros(_mask_shape(x), dtype=bool)


def _fill(x: np.ndarray, known: np.ndarray) -> Damaged:
    return np.where(known, x, np.uint8(FILL)).astype(np.uint8), known


def occlusion(x: np.ndarray, s: float, rng: np.random.Generator) -> Damaged:
    """One rectangle per image, of area round(s * H * W) (aspect ratio drawn in [1/2, 2]), at a random place."""
    n, _, h, w = x.shape
    known = np.ones(_mask_shape(x), dtype=bool)
    area = s * h * w
    for i in range(n):
        aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
        rh = int(np.clip(round(np.sqrt(area * aspect)), 1, h))
        rw = int(np.clip(round(area / rh), 1, w))
        top, left = rng.integers(0, h - rh + 1), rng.integers(0, w - rw + 1)
        known[i, 0, top:top + rh, left:left + rw] = False
    return _fill(x, known)


def pixels(x: np.ndarray, s: float, rng: np.random.Generator) -> Damaged:
    return _fill(x, rng.random(_mask_shape(x)) >= s)


def combo(x: np.ndarray, s: float, rng: np.random.Generator) -> Damaged:
    holed, _ = occlusion(x, s, rng)
    return noise(holed, s / 3, rng)


CORRUPTIONS: dict[str, Corruption] = {"noise": noise, "blur": blur, "occlusion": occlusion, "pixels": pixels,
                                      "combo": combo}
NONE = "none"


def parse_spec(spec: str) -> tuple[str, float] | None:
    """`"occlusion:0.3"` -> ("occlusion", 0.3); `"none"` -> None. ValueError (one line) for anything else."""
    if spec == NONE:
        return None
    name, sep, sev = spec.partition(":")
    if name not in CORRUPTIONS or not sep:
        raise ValueError(f"expected 'none' or '<name>:<severity>' with name one of {', '.join(CORRUPTIONS)} "
                         f"(e.g. 'occlusion:0.3')")
    try:
        s = float(sev)
    except ValueError:
        raise ValueError(f"severity {sev!r} is not a number") from None
    if not 0 < s <= 1:
        raise ValueError(f"severity {s} must be in (0, 1]")
    return name, s


def corrupt(x: np.ndarray, spec: str, seed: int) -> Damaged:
    """Damage uint8 images (N, C, H, W) by `spec`, seeded; `none` returns them unchanged with every pixel known."""
    parsed = parse_spec(spec)
    if parsed is None:
        return x.copy(), np.ones(_mask_shape(x), dtype=bool)
    name, s = parsed
    return CORRUPTIONS[name](x, s, np.random.default_rng(seed))
