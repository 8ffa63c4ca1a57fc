"""Sample grids as pictures: a mosaic of images with a row per class, and its labelled PNG."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ganaug.io.atomic import atomic_file

GRID_COLUMNS = 10
LABEL_MAX = 24  # characters of a class name shown on a picture's axis


def pyplot():
    """matplotlib.pyplot, off-screen, with text drawn as given: a class name such as `$\\x$` is user data, not
    mathtext (which would fail to parse and take the stage down with it)."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


def tick_label(name: str) -> str:
    """A class name as an axis label: one line, at most LABEL_MAX characters."""
    flat = " ".join(str(name).split())
    return flat if len(flat) <= LABEL_MAX else flat[: LABEL_MAX - 1] + "…"


def grid_images(x: np.ndarray, labels: np.ndarray, n_classes: int, n_cols: int) -> np.ndarray:
    """uint8 (N, C, S, S) -> one mosaic (K*(S+1)+1, n_cols*(S+1)+1, C): a row per class, 1-pixel gaps."""
    c, s = x.shape[1], x.shape[-1]
    mosaic = np.full((n_classes * (s + 1) + 1, n_cols * (s + 1) + 1, c), 128, dtype=np.uint8)
    for k in range(n_classes):
        for j, img in enumerate(x[labels == k][:n_cols]):
            r, q = 1 + k * (s + 1), 1 + j * (s + 1)
            mosaic[r : r + s, q : q + s] = img.transpose(1, 2, 0)
    return mosaic


def plot_samples(x: np.ndarray, labels: np.ndarray, class_names: list[str], title: str, path: Path) -> None:
    """A grid of samples, one row per class labelled with the class name, as a PNG."""
    plt = pyplot()
    k, s = len(class_names), x.shape[-1]
    n_cols = max(1, min(GRID_COLUMNS, int(np.bincount(labels, minlength=k).max(initial=0))))
    mosaic = grid_images(x, labels, k, n_cols)
    fig, ax = plt.subplots(figsize=(1.5 + 0.55 * n_cols, 0.8 + 0.55 * k), dpi=100)
    ax.imshow(mosaic[..., 0] if mosaic.shape[-1] == 1 else mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_yticks([1 + r * (s + 1) + s / 2 - 0.5 for r in range(k)], labels=[tick_label(n) for n in class_names])
    ax.set_xticks([])
    ax.tick_params(length=0)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
