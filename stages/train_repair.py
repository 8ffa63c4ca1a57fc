"""Stage `train_repair`: the `repair` generator kind's model -> `models/generators/repair.pt`.

Only `synth.kind: repair` trains it: the restorer U-Net learns, on the source
images (`data/prepared/source.npz`) only, to undo the corruptions of
`repair.corruptions` at strengths in `repair.strengths`
(`ganaug/train/repair.py`); `synthesize` then varies each target shot by
damaging and repairing it (`ganaug/nets/repair.py`). The checkpoint records the
target's class names (`data/restored/target_train.npz`), the corruption list and
the strengths. Training is resumable (checkpoints in `checkpoints/train_repair/`).

With any other `synth.kind` the stage writes a small placeholder at once, so the
default pipeline does not pay for the model; loading it to sample says to
select the kind.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ganaug.config.errors import exit_on_user_error
from ganaug.config.params import RepairParams, load_params
from ganaug.io.atomic import atomic_file
from ganaug.io.data import ImageSet, load_prepared
from ganaug.nets.generators import check_kind_param, checkpoint_path, placeholder
from ganaug.nets.repair import KIND
from ganaug.train.repair import RepairTrainConfig, repair_checkpoint, train_repair
from ganaug.train.runtime import pick_device

OUT = checkpoint_path(KIND)


def train_config(p: RepairParams) -> RepairTrainConfig:
    """The repair params as the trainer's config."""
    lo, hi = p.strengths
    return RepairTrainConfig(list(p.corruptions), (float(lo), float(hi)), p.width, p.steps, p.batch_size, p.lr,
                             p.checkpoint_every, p.seed)


def write_repair(kind: str, source: Optional[ImageSet], class_names: list[str], p: RepairParams, out_path: Path,
                 ckpt_dir: Path, device: torch.device, stop_after: Optional[int] = None) -> dict:
    """Train and write the repair model (kind `repair`) or write the placeholder (any other kind); a summary."""
    if kind != KIND:
        with atomic_file(out_path) as tmp:
            torch.save(placeholder(KIND, kind), tmp)
        return {"placeholder": True, "out": str(out_path)}
    cfg = train_config(p)
    g, s = train_repair(source.x, cfg, device, ckpt_dir / "repair.pt", stop_after)
    if s.get("stopped"):
        return {"placeholder": False, **s}
    with atomic_file(out_path) as tmp:
        torch.save(repair_checkpoint(g, cfg, class_names), tmp)
    return {"placeholder": False, "out": str(out_path), **s}


@exit_on_user_error
def main() -> None:
    params = load_params("params.yaml")
    kind = check_kind_param(params.synth.kind)
    source = load_prepared("data/prepared/source.npz") if kind == KIND else None
    names = load_prepared("data/restored/target_train.npz").class_names
    s = write_repair(kind, source, names, params.repair, OUT, Path("checkpoints/train_repair"), pick_device())
    if s["placeholder"]:
        print(f"train_repair: synth.kind is {kind}, no repair model trained -> placeholder {OUT}")
        return
    print(f"train_repair: {s['steps']} steps on {len(source)} source images in {s['seconds']} s "
          f"(mean L1 {s['mean_l1']}) -> {OUT}")


if __name__ == "__main__":
    main()
