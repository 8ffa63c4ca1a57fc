"""Stage `finetune` (foreach variant): transfer the pretrained classifier to the target classes.

The backbone starts from `models/classifier.pt`, the head is new (one output per
target class), and every variant gets the same optimiser-step budget and seed,
so the variants differ only in their training data and augmentation:

| variant | training data | `--augment` |
|---|---|---|
| `baseline` | real shots | `none` |
| `classical` | real shots | `finetune.augment` (default `trivialaugment`) |
| `augmented` | real + synthetic | `none` |
| `augmented_classical` | real + synthetic | `finetune.augment` |

`--augment` takes a policy name of `stages/classical_aug.py` (random crop with
padding plus torchvision's TrivialAugmentWide or RandAugment, per image).

The `distill` variants (dvc.yaml's second foreach) train on the real shots plus
a second stream (`--extra`: `data/synthetic` and/or `data/prepared/source.npz`),
each step a real batch of `finetune.batch_size` and a stream batch of
`finetune.synth_batch`; the stream's images are labelled by the teacher
(`finetune.teacher`: real-shot variants, their mean) at `finetune.temperature`,
and/or by their hard labels (`finetune.synth_labels`), see `stages/streams.py`:

| variant | second stream |
|---|---|
| `gan` | the GAN's images (`data/synthetic`) |
| `source` | source-set images relabelled by the teacher over the target classes (no GAN) |
| `gan_source` | both |
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from stages.atomic import atomic_file
from stages.classical_aug import POLICIES, build_augment, check_policy
from stages.classifier_model import load_classifier, save_classifier
from stages.data import ImageSet, load_prepared, load_synthetic, load_training_set, to_float
from stages.errors import DataError, UserError, exit_on_user_error
from stages.fit import FitConfig, fit
from stages.params import FinetuneParams, load_params
from stages.runtime import pick_device, seed_everything
from stages.streams import Stream, hard_weight_of, subsample, teacher_probs

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
    aug = build_augment(augment)
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
        model, _, names = load_classifier(path)
        variant = torch.load(path, map_location="cpu", weights_only=True).get("summary", {}).get("variant")
        if variant not in REAL_ONLY:
            raise UserError(f"{path}: a teacher must be a real-shot variant ({', '.join(REAL_ONLY)}), "
                            f"this one is {variant!r}")
        if names != train.class_names:
            raise UserError(f"{path}: teacher trained for classes {names}, the target has {train.class_names}")
        teachers.append(model)
    return teachers


def load_stream_images(paths: list[Path], train: ImageSet, p: FinetuneParams) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, C, H, W uint8) and hard labels (-1 for source images) of the second stream's sources."""
    xs, hs = [], []
    for path in paths:
        if path.suffix == ".npz":  # the prepared source set: other classes, so no hard label
            src = load_prepared(path)
            if src.x.shape[1:] != train.x.shape[1:]:
                raise DataError(f"{path}: images {src.x.shape[1:]} do not match the target's {train.x.shape[1:]}")
            idx = subsample(len(src), p.source_images, p.seed).numpy()
            xs.append(src.x[idx])
            hs.append(np.full(len(idx), -1, dtype=np.int64))
        else:
            syn = load_synthetic(path, train)
            if syn is not None:  # a filter may have kept no synthetic image at all
                xs.append(syn.x)
                hs.append(syn.y)
    if not xs:
        raise DataError(f"{', '.join(map(str, paths))}: no images for the second stream")
    return np.concatenate(xs), np.concatenate(hs)


def build_stream(paths: list[Path], train: ImageSet, teacher_paths: list[Path], p: FinetuneParams,
                 batch_size: int, device: torch.device) -> Stream:
    """The second stream: its images, their teacher probabilities at `p.temperature` and their hard labels."""
    x, hard = load_stream_images(paths, train, p)
    x = to_float(x)
    soft = teacher_probs(load_teachers(teacher_paths, train), x, p.temperature, batch_size, device)
    return Stream(x, soft, torch.from_numpy(hard), p.temperature)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--train", required=True, help="a prepared .npz or an ImageFolder tree with manifest.parquet")
    ap.add_argument("--augment", default="none", help=f"classical augmentation policy: {' | '.join(POLICIES)}")
    ap.add_argument("--extra", nargs="*", default=[], type=Path,
                    help="second stream: data/synthetic and/or data/prepared/source.npz (labelled by the teacher)")
    args = ap.parse_args(argv)
    p = load_params().finetune
    check_policy(args.augment, "finetune --augment")
    clf_path = Path("models/classifier.pt")
    _, clf_cfg, _ = load_classifier(clf_path)
    train = load_training_set(Path(args.train), clf_cfg.image_size, clf_cfg.channels)
    device = pick_device()
    stream = None
    if args.extra:
        teachers = [Path(f"models/finetune/{t}.pt") for t in p.teacher]
        stream = build_stream(args.extra, train, teachers, p, p.batch_size * 16, device)
    model, cfg, summary = finetune(clf_path, train, p, device, live_dir=f"dvclive/finetune/{args.variant}",
                                   ckpt_path=Path(f"checkpoints/finetune/{args.variant}.pt"), augment=args.augment,
                                   stream=stream)
    out = Path(f"models/finetune/{args.variant}.pt")
    with atomic_file(out) as tmp:  # no timings in the file: same params, same bytes
        save_classifier(tmp, model, cfg, train.class_names,
                        {"variant": args.variant, "train": str(args.train), "train_images": len(train),
                         "augment": args.augment, "extra": [str(e) for e in args.extra],
                         "stream_images": summary["stream_images"],
                         "teacher": list(p.teacher) if args.extra else []})
    extra = f", + {summary['stream_images']} stream images ({' + '.join(map(str, args.extra))})" if args.extra else ""
    print(f"finetune[{args.variant}]: {len(train)} training images{extra}, augment {args.augment}, "
          f"{summary['steps']} steps in {summary['seconds']}s -> {out}")


if __name__ == "__main__":
    main()
