"""Non-learned restorers a user would try first, keyed by name; `auto` picks one per corruption.

Each maps uint8 images (N, C, H, W) and `known` (N, 1, H, W) bool (True: the
pixel is clean, from `corruptions.py`) to uint8 images. The inpainting ones
change only pixels that are not known.

| name | method |
|---|---|
| `median` | 3x3 median filter (scipy), for noise |
| `bilateral` | bilateral filter (scikit-image `denoise_bilateral`), for noise |
| `unsharp` | unsharp masking (scikit-image), for blur |
| `biharmonic` | biharmonic inpainting of the missing pixels (scikit-image `inpaint_biharmonic`) |
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.ndimage import median_filter
from skimage.filters import unsharp_mask
from skimage.restoration import denoise_bilateral, inpaint_biharmonic

Restorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _per_image(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """Apply `fn` to each (H, W) plane in [0, 1] floats; back to uint8."""
    out = np.empty(x.shape, dtype=np.float64)
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            out[i, c] = fn(x[i, c] / 255.0)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def median(x: np.ndarray, known: np.ndarray) -> np.ndarray:
    return median_filter(x, size=(1, 1, 3, 3), mode="nearest")


def bilateral(x: np.ndarray, known: np.ndarray) -> np.ndarray:
    return _per_image(lambda im: denoise_bilateral(im, sigma_color=0.15, sigma_spatial=1.0), x)


def unsharp(x: np.ndarray, known: np.ndarray) -> np.ndarray:
    return _per_image(lambda im: unsharp_mask(im, radius=1.0, amount=1.0), x)


def biharmonic(x: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill the missing pixels from the known ones; an image with no known pixel is left as it is."""
    out = x.copy()
    for i in range(x.shape[0]):
        missing = ~known[i, 0]
        if missing.any() and not missing.all():
            filled = inpaint_biharmonic(x[i] / 255.0, missing, channel_axis=0)
            out[i] = np.where(missing, np.clip(np.rint(filled * 255.0), 0, 255), x[i]).astype(np.uint8)
    return out


CLASSICAL: dict[str, Restorer] = {"median": median, "bilateral": bilateral, "unsharp": unsharp,
                                  "biharmonic": biharmonic}
AUTO = {"noise": "median", "blur": "unsharp", "occlusion": "biharmonic", "pixels": "biharmonic",
        "combo": "median"}  # combo: its holes are noisy too, so no pixel is known and only the noise is treated


def classical_name(method: str, corruption: str) -> str:
    """The restorer `method` names; `auto`: the usual one for `corruption` (a name of corruptions.CORRUPTIONS)."""
    return AUTO[corruption] if method == "auto" else method


def restore_classical(x: np.ndarray, known: np.ndarray, method: str, corruption: str) -> np.ndarray:
    return CLASSICAL[classical_name(method, corruption)](x, known)
