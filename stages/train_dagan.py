"""Stage `train_dagan`: the `dagan` generator kind's model -> `models/generators/dagan.pt`.

Only `synth.kind: dagan` trains it: a DAGAN (`ganaug/nets/dagan.py`) learns, on
pairs of source images of one class (`data/prepared/source.npz`), to turn an
image and noise into another image of the same class (`ganaug/train/dagan.py`),
then adapts for `dagan.adapt_steps` steps on pairs of the target shots
(`data/restored/target_train.npz`); `synthesize` then makes variations of each
target shot. The checkpoint records the target's class names. Training is
resumable (checkpoints in `checkpoints/train_dagan/`).

With any other `synth.kind` the stage writes a small placeholder at once, so the
default pipeline does not pay for the model; loading it to sample says to
select the kind.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ganaug.config.errors import exit_on_user_error
from ganaug.config.params import DaganParams, load_params
from ganaug.io.atomic import atomic_file
from ganaug.io.data import ImageSet, load_prepared
from ganaug.nets.dagan import KIND
from ganaug.nets.generators import check_kind_param, checkpoint_path, placeholder
from ganaug.train.dagan import DaganTrainConfig, dagan_checkpoint, train_dagan
from ganaug.train.runtime import pick_device

OUT = checkpoint_path(KIND)


def train_config(p: DaganParams) -> DaganTrainConfig:
    """The dagan params as the trainer's config."""
    return DaganTrainConfig(p.z_dim, p.g_width, p.d_width, p.steps, p.adapt_steps, p.batch_size, p.lr_g, p.lr_d,
                            ema_decay=p.ema_decay, diffaug=p.diffaug, mismatch=p.mismatch, diversity=p.diversity,
                            checkpoint_every=p.checkpoint_every, seed=p.seed)


def write_dagan(kind: str, source: Optional[ImageSet], target: Optional[ImageSet], p: DaganParams, out_path: Path,
                ckpt_dir: Path, device: torch.device, stop_after: Optional[int] = None) -> dict:
    """Train and write the DAGAN (kind `dagan`) or write the placeholder (any other kind); a summary."""
    if kind != KIND:
        with atomic_file(out_path) as tmp:
            torch.save(placeholder(KIND, kind), tmp)
        return {"placeholder": True, "out": str(out_path)}
    tc = train_config(p)
    trainer, s = train_dagan(source, target, tc, device, ckpt_dir / "dagan.pt", stop_after)
    if s.get("stopped"):
        return {"placeholder": False, **s}
    with atomic_file(out_path) as tmp:
        torch.save(dagan_checkpoint(trainer, tc, target.class_names), tmp)
    return {"placeholder": False, "out": str(out_path), **s}


@exit_on_user_error
def main() -> None:
    params = load_params("params.yaml")
    kind = check_kind_param(params.synth.kind)
    source = load_prepared("data/prepared/source.npz") if kind == KIND else None
    target = load_prepared("data/restored/target_train.npz")
    s = write_dagan(kind, source, target, params.dagan, OUT, Path("checkpoints/train_dagan"), pick_device())
    if s["placeholder"]:
        print(f"train_dagan: synth.kind is {kind}, no DAGAN trained -> placeholder {OUT}")
        return
    print(f"train_dagan: {s['steps']} steps on pairs of {len(source)} source images "
          f"({params.dagan.adapt_steps} on the target shots) in {s['seconds']} s -> {OUT}")


if __name__ == "__main__":
    main()
