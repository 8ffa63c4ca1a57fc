"""Image quality of a restoration against the clean images: PSNR and SSIM (scikit-image's implementations).

Both take uint8 images (N, C, H, W) and average per image. PSNR of an image
with itself is infinite; it is capped at `PSNR_CAP` dB so the JSON stays numbers.
"""
from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

PSNR_CAP = 100.0


def psnr(clean: np.ndarray, other: np.ndarray) -> float:
    """Mean per-image PSNR in dB (data range 255), each capped at PSNR_CAP."""
    vals = []
    for a, b in zip(clean, other):
        mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
        vals.append(PSNR_CAP if mse == 0 else min(PSNR_CAP, peak_signal_noise_ratio(a, b, data_range=255)))
    return float(np.mean(vals))


def ssim(clean: np.ndarray, other: np.ndarray) -> float:
    """Mean per-image SSIM (7x7 window, or the image's odd side if smaller; channels averaged)."""
    side = min(clean.shape[-2:])
    win = min(7, side if side % 2 else side - 1)
    return float(np.mean([structural_similarity(a, b, data_range=255, channel_axis=0, win_size=win)
                          for a, b in zip(clean, other)]))


def quality(clean: np.ndarray, other: np.ndarray) -> dict[str, float]:
    return {"psnr": round(psnr(clean, other), 4), "ssim": round(ssim(clean, other), 4)}
