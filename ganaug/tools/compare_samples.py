"""Sample grids of several generators side by side, from the same noise (e.g. scratch vs source init).

    python -m ganaug.tools.compare_samples scratch=exp_a/models/gan.pt source=exp_b/models/gan.pt \
        -o plots/samples_scratch_vs_source.png

Each panel is one generator checkpoint of any kind (`ganaug/nets/generators.py`;
`--generator` picks the weights, default ema): a row per class, `--per-class`
columns, every panel drawn from a noise stream seeded with `--seed`. Conditioned
kinds draw from `--shots`. Not a DVC stage: one pipeline run trains one GAN;
this compares the gan.pt of two runs.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ganaug.config.errors import UserError, exit_on_user_error
from ganaug.io.atomic import atomic_file
from ganaug.io.data import ImageSet, load_prepared
from ganaug.io.pictures import grid_images, pyplot, tick_label
from ganaug.nets.generators import load_sampler
from ganaug.nets.sampling import SampleOptions


def panels(gans: dict[str, Path], per_class: int, seed: int, which: str,
           shots: Optional[ImageSet] = None) -> tuple[dict[str, np.ndarray], list[str]]:
    """{name: mosaic (H, W, C) uint8} for each generator, and the class names (which must agree)."""
    out, names = {}, None
    for name, path in gans.items():
        sampler = load_sampler(path, SampleOptions(weights=which))
        if names is not None and sampler.class_names != names:
            raise UserError(f"{path}: classes {sampler.class_names} differ from {names}")
        names = sampler.class_names
        labels = torch.arange(sampler.n_classes).repeat_interleave(per_class)
        x = sampler(labels, torch.Generator().manual_seed(seed), shots).images  # (K * per_class, C, S, S)
        out[name] = grid_images(x, labels.numpy(), sampler.n_classes, per_class)
    return out, names or []


def plot_panels(mosaics: dict[str, np.ndarray], class_names: list[str], title: str, path: Path) -> None:
    plt = pyplot()

    n = len(mosaics)
    h, w = next(iter(mosaics.values())).shape[:2]
    fig, axes = plt.subplots(1, n, figsize=(1 + 3.2 * n, 0.8 + 3.2 * h / w), dpi=100, squeeze=False)
    for ax, (name, m) in zip(axes[0], mosaics.items()):
        ax.imshow(m[..., 0] if m.shape[-1] == 1 else m, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        rows = len(class_names)
        ax.set_yticks([(r + 0.5) * (h - 1) / rows for r in range(rows)], labels=[tick_label(n) for n in class_names])
        ax.set_xticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gans", nargs="+", help="NAME=path/to/gan.pt")
    ap.add_argument("-o", "--out", default="plots/samples_compare.png")
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--generator", default="ema", choices=("ema", "average", "raw"))
    ap.add_argument("--shots", type=Path, default=None, help="real shots (.npz of x, y) for conditioned kinds")
    args = ap.parse_args(argv)
    bad = [g for g in args.gans if "=" not in g]
    if bad:
        raise UserError(f"compare_samples: expected NAME=path/to/gan.pt, got {bad[0]!r}")
    gans = {name: Path(path) for name, path in (g.split("=", 1) for g in args.gans)}
    shots = load_prepared(args.shots) if args.shots is not None else None
    mosaics, names = panels(gans, args.per_class, args.seed, args.generator, shots)
    plot_panels(mosaics, names, f"{args.generator} generators, same noise (seed {args.seed})", Path(args.out))
    print(f"compare_samples: {', '.join(gans)} -> {args.out}")


if __name__ == "__main__":
    main()
