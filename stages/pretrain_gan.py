"""Stage `pretrain_gan`: the class-conditional GAN trained on the source set -> `models/gan_source.pt`.

Only `gan.init: source` trains it. With `gan.init: checkpoint` the stage checks
`gan.init_checkpoint` (a `models/gan.pt` ganaug wrote before, e.g. in another
project) against the gan params and writes it here as the start of `train_gan`
(a class count of its own is fine: class embeddings start afresh). Its path is a
param: DVC reruns when the path changes; after changing the file in place run
`dvc repro -f pretrain_gan`. With `gan.init: scratch` (the default) the
stage writes a small placeholder saying so in well under a second, so the
default pipeline does not pay for a source GAN; `train_gan` refuses the
placeholder if it is ever asked to start from it.

The source GAN is trained by the same trainer as the target GAN
(`ganaug.train.gan.train_gan`), for `gan.source_steps` steps, with the target-only
knobs off (no freezing, no snapshot averaging); it is resumable the same way
(checkpoints in `checkpoints/pretrain_gan/`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ganaug.config.errors import exit_on_user_error
from ganaug.config.params import GanParams, load_params
from ganaug.io.atomic import atomic_file
from ganaug.io.data import ImageSet, load_prepared
from ganaug.train.gan import check_gan_checkpoint, train_gan
from ganaug.train.runtime import pick_device

OUT = Path("models/gan_source.pt")
PLACEHOLDER = {"placeholder": "gan.init is not 'source': no source GAN was needed"}


def source_params(p: GanParams) -> GanParams:
    """The gan params of the source run: `source_steps` steps, from scratch, no freezing or averaging."""
    d = GanParams()  # target-only knobs at their defaults, so they do not show up in gan_source.pt
    return p.model_copy(update={"steps": p.source_steps, "init": "scratch", "freeze": "none", "average_last": 0,
                                "freeze_d_blocks": d.freeze_d_blocks, "alternate_steps": d.alternate_steps,
                                "average_every": d.average_every})


def pretrain_gan(source: Optional[ImageSet], p: GanParams, out_path: Path, ckpt_dir: Path, device: torch.device) -> dict:
    """Train the source GAN (init=source) or write the placeholder (init=scratch); return a summary."""
    if p.init == "checkpoint":
        blob = check_gan_checkpoint(Path(p.init_checkpoint), p)
        with atomic_file(out_path) as tmp:
            torch.save(blob, tmp)
        return {"placeholder": False, "out": str(out_path), "checkpoint": p.init_checkpoint}
    if p.init != "source":
        with atomic_file(out_path) as tmp:
            torch.save(PLACEHOLDER, tmp)
        return {"placeholder": True, "out": str(out_path)}
    return {"placeholder": False, **train_gan(source, source_params(p), out_path, ckpt_dir, device)}


@exit_on_user_error
def main() -> None:
    p = load_params("params.yaml").gan
    source = load_prepared("data/prepared/source.npz") if p.init == "source" else None
    s = pretrain_gan(source, p, OUT, Path("checkpoints/pretrain_gan"), pick_device())
    if p.init == "checkpoint":
        print(f"pretrain_gan: gan.init is checkpoint, {p.init_checkpoint} checked and copied -> {OUT}")
        return
    if s["placeholder"]:
        print(f"pretrain_gan: gan.init is {p.init}, no source GAN trained -> placeholder {OUT}")
        return
    print(f"pretrain_gan: {s['steps']} steps on {len(source)} source images ({len(source.class_names)} classes) "
          f"in {s['seconds']} s -> {s['out']}")


if __name__ == "__main__":
    main()
