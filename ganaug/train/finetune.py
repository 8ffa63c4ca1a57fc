"""Fine-tuning the pretrained classifier on the target classes (stages finetune, distill and gan_metrics' CAS).

`finetune` starts the backbone from the pretrained classifier, gives it a new
head (one output per target class) and trains it with `fit()` for the
`finetune:` step budget and seed, with a classical augmentation policy
(`ganaug/train/classical_aug.py`) and, optionally, a second stream: `build_stream`
loads synthetic and/or source images and labels them by the teachers (real-shot
variants, `REAL_ONLY`) at `finetune.temperature` (`ganaug/train/streams.py`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ganaug.config.errors import DataError, UserError
from ganaug.config.params import FinetuneParams
from ganaug.io.atomic import file_sha256
from ganaug.io.data import ImageSet, load_prepared, load_synthetic, to_float
from ganaug.io.imagefolder import read_manifest
from ganaug.io.stream_labels import stream_frame
from ganaug.nets.classifier import load_classifier, load_classifier_and_summary
from ganaug.train.classical_aug import build_augment
from ganaug.train.fit import FitConfig, fit
from ganaug.train.runtime import seed_everything
from ganaug.train.streams import Stream, hard_weight_of, subsample, teacher_probs

REAL_ONLY = ("baseline", "classical")  # the variants trained on the real shots alone: the only possible teachers


def fit_config(p: FinetuneParams) -> FitConfig:
    """The training loop's settings from the `finetune:` params (built once)."""
    return FitConfig(p.steps, p.batch_size, p.lr, p.weight_decay, p.backbone_lr_mult, p.seed,
                     checkpoint_every=p.checkpoint_every, stream_batch=p.synth_batch, stream_weight=p.synth_weight,
                     hard_weight=hard_weight_of(p.synth_labels, p.mixed_hard_weight), schedule=p.schedule,
                     first_fraction=p.first_fraction, bn=p.bn)


def finetune(classifier_path: Path, train: ImageSet, p: FinetuneParams, device: torch.device,
             live_dir: str | None = None, ckpt_path: Path | None = None, augment: str = "none",
             stream: Stream | None = None):
    """Fine-tune the pretrained classifier on `train` (plus `stream`) with policy `augment`; return (model, config, summary).

    `p.augment` is not read here: it is the policy dvc.yaml passes to the *_classical variants.
    """
    aug = build_augment(augment, len(train.class_names))
    seed_everything(p.seed)
    model, cfg, _ = load_classifier(classifier_path)
    model.reset_head(len(train.class_names))
    cfg.n_classes = len(train.class_names)
    summary = fit(model, to_float(train.x), torch.tensor(train.y), fit_config(p), device, live_dir,
                  augment=aug, desc="finetune", ckpt_path=ckpt_path, stream=stream,
                  stream_augment=build_augment(p.synth_augment) if stream is not None else None)
    summary.update(train_images=len(train), augment=augment, stream_images=len(stream) if stream is not None else 0)
    return model.cpu(), cfg, summary


def load_teachers(paths: list[Path], train: ImageSet) -> list[torch.nn.Module]:
    """The teacher classifiers: each fine-tuned on the real shots alone (a real-only variant), for `train`'s classes."""
    teachers = []
    for path in paths:
        model, _, names, summary = load_classifier_and_summary(path)
        variant = summary.get("variant")
        if variant not in REAL_ONLY:
            raise UserError(f"{path}: a teacher must be a real-shot variant ({', '.join(REAL_ONLY)}), "
                            f"this one is {variant!r}")
        if names != train.class_names:
            raise UserError(f"{path}: teacher trained for classes {names}, the target has {train.class_names}")
        teachers.append(model)
    return teachers


TEACHER_INDEX = "teachers.json"  # in models/teachers/ (stage teachers): which seed teachers it holds, made how


def seed_teacher_names(p: FinetuneParams) -> list[tuple[str, int]]:
    """(recipe, seed) of the `teacher_seeds - 1` extra models per teacher in `p.teacher`: seeds `p.seed + 1`, ..."""
    return [(name, p.seed + k) for name in p.teacher for k in range(1, p.teacher_seeds)]


def seed_teacher(classifier_path: Path, train: ImageSet, p: FinetuneParams, name: str, seed: int,
                 device: torch.device, ckpt_path: Path | None = None):
    """Fine-tune recipe `name` as its variant is (`baseline`: no augmentation, `classical`: `p.augment`), at `seed`."""
    q = p.model_copy(update={"seed": seed})
    return finetune(classifier_path, train, q, device, ckpt_path=ckpt_path,
                    augment="none" if name == "baseline" else p.augment)


def teacher_index(p: FinetuneParams) -> dict:
    """What models/teachers/teachers.json records: the params the seed teachers were made with, and their files."""
    return {"teacher": list(p.teacher), "teacher_seeds": p.teacher_seeds, "seed": p.seed,
            "files": [f"{name}_seed{seed}.pt" for name, seed in seed_teacher_names(p)]}


def teacher_paths(p: FinetuneParams, variants_dir: Path, teachers_dir: Path) -> list[Path]:
    """The teachers' files: each variant of `p.teacher` (`variants_dir/<name>.pt`), then the seed teachers of
    `teachers_dir` (stage teachers), which must have been made for these params."""
    index_path = Path(teachers_dir) / TEACHER_INDEX
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{index_path}: no index of the seed teachers ({exc.__class__.__name__}); run the teachers stage") from None
    want = teacher_index(p)
    if {k: index.get(k) for k in want} != want:
        raise UserError(f"{index_path}: made for teacher {index.get('teacher')}, teacher_seeds {index.get('teacher_seeds')}, "
                        f"seed {index.get('seed')}; the finetune params say {want['teacher']}, {want['teacher_seeds']}, "
                        f"{want['seed']}: run the teachers stage again")
    return [Path(variants_dir) / f"{t}.pt" for t in p.teacher] + [Path(teachers_dir) / f for f in index["files"]]


def load_stream_images(paths: list[Path], train: ImageSet, p: FinetuneParams
                       ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Images (N, C, H, W uint8), hard labels (-1 for source images) and (origin, ref) of each image of the
    second stream's sources: ref is a synthetic image's manifest path or a source image's row in its .npz."""
    xs, hs, refs = [], [], []
    for path in paths:
        if path.suffix == ".npz":  # the prepared source set: other classes, so no hard label
            src = load_prepared(path)
            if src.x.shape[1:] != train.x.shape[1:]:
                raise DataError(f"{path}: images {src.x.shape[1:]} do not match the target's {train.x.shape[1:]}")
            idx = subsample(len(src), p.source_images, p.seed).numpy()
            xs.append(src.x[idx])
            hs.append(np.full(len(idx), -1, dtype=np.int64))
            refs += [("source", str(int(i))) for i in idx]
        else:
            syn = load_synthetic(path, train)
            if syn is not None:  # a filter may have kept no synthetic image at all
                xs.append(syn.x)
                hs.append(syn.y)
                refs += [("synthetic", str(rel)) for rel in read_manifest(path)["path"]]
    if not xs:
        raise DataError(f"{', '.join(map(str, paths))}: no images for the second stream")
    return np.concatenate(xs), np.concatenate(hs), refs


def build_stream(paths: list[Path], train: ImageSet, teacher_paths: list[Path], p: FinetuneParams,
                 batch_size: int, device: torch.device) -> Stream:
    """The second stream: its images, and their hard labels and probabilities under the mean of the teachers at
    `teacher_paths` (at `p.temperature`); `refs` says where each image came from (`stream_labels_frame`)."""
    x, hard, refs = load_stream_images(paths, train, p)
    x = to_float(x)
    soft = teacher_probs(load_teachers(teacher_paths, train), x, p.temperature, batch_size, device)
    return Stream(x, soft, torch.from_numpy(hard), p.temperature, refs=refs)


def stream_labels_frame(stream: Stream) -> pd.DataFrame:
    """The stream's rows as `data/streams/<variant>/labels.parquet` records them (`ganaug/io/stream_labels.py`)."""
    origin, ref = zip(*stream.refs) if stream.refs else ((), ())
    return stream_frame(list(origin), list(ref), stream.hard.numpy(), stream.soft.numpy())


def teacher_record(paths: list[Path], p: FinetuneParams) -> dict:
    """What `teacher.json` says of the teacher: the temperature and each file's variant, seed and sha256."""
    files = []
    for path in paths:
        summary = load_classifier_and_summary(path)[3]
        files.append({"file": str(path), "variant": summary.get("variant"), "seed": summary.get("seed", p.seed),
                      "sha256": file_sha256(path)})
    return {"temperature": p.temperature, "mean_of": files, "variants": list(p.teacher),
            "seeds": [p.seed + k for k in range(p.teacher_seeds)]}
