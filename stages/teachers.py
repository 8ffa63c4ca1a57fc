"""Stage `teachers`: the distill variants' extra teachers, fine-tuned once and shared by all three.

The second stream of the distill variants is labelled by the mean of the teachers
in `finetune.teacher` (`models/finetune/baseline.pt`, `classical.pt`: the real-shot
variants at `finetune.seed`). With `finetune.teacher_seeds: n > 1` each of those
recipes is also fine-tuned at seeds `seed + 1` ... `seed + n - 1`, and this stage
trains those models: `models/teachers/<recipe>_seed<s>.pt`, plus `teachers.json`,
the index distill checks against its own params (with n = 1, the index alone).
Trained here once instead of in each of the three distill stages.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ganaug.config.errors import exit_on_user_error
from ganaug.config.params import FinetuneParams, load_params
from ganaug.io.atomic import atomic_dir
from ganaug.io.data import ImageSet, load_prepared
from ganaug.nets.classifier import save_classifier
from ganaug.train.finetune import TEACHER_INDEX, seed_teacher, seed_teacher_names, teacher_index
from ganaug.train.runtime import pick_device, progress

OUT = Path("models/teachers")


def train_teachers(classifier_path: Path, train: ImageSet, p: FinetuneParams, device: torch.device,
                   out_dir: Path, ckpt_dir: Path | None = None, train_name: str = "") -> dict:
    """Fine-tune every seed teacher of `p` and write them with their index into `out_dir` (replaced whole);
    each file's summary records `train_name`, the file its shots came from."""
    index = teacher_index(p)
    with atomic_dir(out_dir) as tmp:
        for (name, seed), file in zip(progress(seed_teacher_names(p), desc="teachers"), index["files"]):
            ckpt = Path(ckpt_dir) / file if ckpt_dir else None
            model, cfg, summary = seed_teacher(classifier_path, train, p, name, seed, device, ckpt)
            save_classifier(tmp / file, model, cfg, train.class_names,
                            {"variant": name, "seed": seed, "train": train_name, "train_images": len(train),
                             "steps": summary["steps"]})
        (tmp / TEACHER_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return index


@exit_on_user_error
def main() -> None:
    p = load_params().finetune
    train_path = Path("data/restored/target_train.npz")
    train = load_prepared(train_path)
    index = train_teachers(Path("models/classifier.pt"), train, p, pick_device(), OUT, Path("checkpoints/teachers"),
                           str(train_path))
    print(f"teachers: {len(index['files'])} seed teacher(s) ({', '.join(index['files']) or 'teacher_seeds is 1'}) -> {OUT}")


if __name__ == "__main__":
    main()
