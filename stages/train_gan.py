"""Stage `train_gan`: a class-conditional GAN on the few target images -> `models/gan.pt`.

The training (losses, transfer from `models/gan_source.pt`, freezing, averaging,
checkpoints in `checkpoints/train_gan/`) is `ganaug.train.gan.train_gan`. It starts from
`models/gan_source.pt` (gan.init source or checkpoint) or `models/gan_meta.pt` (meta).
When `synth.kind` selects another generator kind, the stage writes a small placeholder
at once (and empty training curves), so an unselected GAN costs no training.
"""
from __future__ import annotations

from pathlib import Path

import shutil

import torch

from ganaug.config.errors import exit_on_user_error
from ganaug.config.params import load_params
from ganaug.io.atomic import atomic_file
from ganaug.io.data import load_prepared
from ganaug.nets.gan import KIND
from ganaug.nets.generators import placeholder
from ganaug.train.gan import train_gan
from ganaug.train.runtime import pick_device

OUT, LIVE = Path("models/gan.pt"), Path("dvclive/train_gan")


def write_placeholder(out: Path, live: Path, kind: str) -> None:
    """models/gan.pt saying which kind was selected instead, and the curves' folder with no curve in it."""
    with atomic_file(out) as tmp:
        torch.save(placeholder(KIND, kind), tmp)
    shutil.rmtree(live, ignore_errors=True)
    (live / "plots" / "metrics").mkdir(parents=True)


@exit_on_user_error
def main() -> None:
    params = load_params("params.yaml")
    if params.synth.kind != KIND:
        write_placeholder(OUT, LIVE, params.synth.kind)
        print(f"train_gan: synth.kind is {params.synth.kind}, no GAN trained -> placeholder {OUT}")
        return
    p = params.gan
    ds = load_prepared("data/restored/target_train.npz")
    start = Path("models/gan_meta.pt" if p.init == "meta" else "models/gan_source.pt")
    s = train_gan(ds, p, Path("models/gan.pt"), Path("checkpoints/train_gan"), pick_device(), "dvclive/train_gan",
                  source_path=start)
    resumed = f" (resumed at step {s['resumed_from']})" if s["resumed_from"] else ""
    print(f"train_gan: {s['steps']} steps{resumed} in {s['seconds']} s, {s['images_per_s']} real images/s "
          f"(loss_d {s.get('loss_d', float('nan')):.3f}, loss_g {s.get('loss_g', float('nan')):.3f}) -> {s['out']}")


if __name__ == "__main__":
    main()
