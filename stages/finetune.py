"""Stage `finetune` (foreach variant): transfer the pretrained classifier to the target classes.

The backbone starts from `models/classifier.pt`, the head is new (one output per
target class), and every variant gets the same optimiser-step budget and seed,
so the variants differ only in their training data and augmentation:

| variant | training data | `--augment` |
|---|---|---|
| `baseline` | real shots | `none` |
| `classical` | real shots | `finetune.augment` (default `trivialaugment`) |
| `augmented` | real + synthetic (`--train target_train.npz data/synthetic`: the images `concat` publishes) | `none` |

`--augment` takes a policy name of `ganaug/train/classical_aug.py` (random crop with
padding plus torchvision's TrivialAugmentWide or RandAugment, per image).

The `distill` variants (dvc.yaml's second foreach) train on the real shots plus
a second stream (`--extra`: `data/synthetic` and/or `data/prepared/source.npz`),
each step a real batch of `finetune.batch_size` and a stream batch of
`finetune.synth_batch`; the stream's images are labelled by the teacher
(`finetune.teacher`: real-shot variants, their mean; with `finetune.teacher_seeds` > 1
also the same recipes at more seeds, from the stage `teachers`) at `finetune.temperature`,
and/or by their hard labels (`finetune.synth_labels`), see `ganaug/train/streams.py`:

| variant | second stream |
|---|---|
| `gan` | the GAN's images (`data/synthetic`) |
| `source` | source-set images relabelled by the teacher over the target classes (no GAN) |
| `gan_source` | both |

Their real batch is augmented with `finetune.real_augment` (default `none`; `--augment` overrides).
Each writes its stream's images and teacher probabilities to `data/streams/<variant>/`
(`ganaug/io/stream_labels.py`), which `concat` publishes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ganaug.config.errors import exit_on_user_error
from ganaug.config.params import load_params
from ganaug.io.atomic import atomic_dir, atomic_file
from ganaug.io.data import load_training_set
from ganaug.nets.classifier import load_classifier, save_classifier
from ganaug.train.classical_aug import POLICIES, check_policy
from ganaug.io.stream_labels import write_stream_labels
from ganaug.train.finetune import build_stream, finetune, stream_labels_frame, teacher_paths, teacher_record
from ganaug.train.runtime import pick_device


STREAMS = Path("data/streams")


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--train", required=True, nargs="+", type=Path,
                    help="a prepared .npz or an ImageFolder tree with manifest.parquet, then optionally trees of "
                         "synthetic images (data/synthetic) added to it with their hard labels")
    ap.add_argument("--augment", help=f"classical augmentation policy: {' | '.join(POLICIES)} (default: "
                                      "finetune.real_augment with --extra, else none)")
    ap.add_argument("--extra", nargs="*", default=[], type=Path,
                    help="second stream: data/synthetic and/or data/prepared/source.npz (labelled by the teacher)")
    args = ap.parse_args(argv)
    p = load_params().finetune
    if args.augment is None:
        args.augment = p.real_augment if args.extra else "none"
    check_policy(args.augment, "finetune --augment")
    clf_path = Path("models/classifier.pt")
    _, clf_cfg, _ = load_classifier(clf_path)
    train = load_training_set(args.train, clf_cfg.image_size, clf_cfg.channels)
    device = pick_device()
    stream = None
    if args.extra:
        teachers = teacher_paths(p, Path("models/finetune"), Path("models/teachers"))
        stream = build_stream(args.extra, train, teachers, p, p.batch_size * 16, device)
        with atomic_dir(STREAMS / args.variant) as tmp:  # the labels as this run uses them, for concat to publish
            write_stream_labels(tmp, stream_labels_frame(stream), teacher_record(teachers, p))
    model, cfg, summary = finetune(clf_path, train, p, device, live_dir=f"dvclive/finetune/{args.variant}",
                                   ckpt_path=Path(f"checkpoints/finetune/{args.variant}.pt"), augment=args.augment,
                                   stream=stream)
    out = Path(f"models/finetune/{args.variant}.pt")
    with atomic_file(out) as tmp:  # no timings in the file: same params, same bytes
        save_classifier(tmp, model, cfg, train.class_names,
                        {"variant": args.variant, "train": " + ".join(map(str, args.train)), "train_images": len(train),
                         "augment": args.augment, "extra": [str(e) for e in args.extra],
                         "stream_images": summary["stream_images"],
                         "teacher": list(p.teacher) if args.extra else [],
                         "teacher_seeds": p.teacher_seeds if args.extra else 0})
    extra = f", + {summary['stream_images']} stream images ({' + '.join(map(str, args.extra))})" if args.extra else ""
    print(f"finetune[{args.variant}]: {len(train)} training images{extra}, augment {args.augment}, "
          f"{summary['steps']} steps in {summary['seconds']}s -> {out}")


if __name__ == "__main__":
    main()
